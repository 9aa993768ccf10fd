"""Redaction of secrets from anything that goes into a bundle.

A bundle is shared, so nothing in it may carry a secret. Every document and log enters a
bundle through its writer (:class:`kit.bundle.Bundle`), which passes it through here:

- ``scrub(doc)`` for JSON/YAML documents: in every mapping, a variable-style key
  (``UPPER_CASE``) whose *name* looks secret (token, secret, password, pass, pw, key,
  credential, auth, cookie, session, ...) has its value replaced; every list of strings is
  treated as an argv (``--api-key X``, ``--token=X``); every string has secret *values*
  masked whatever their name (a URL with a password, ``NAME=value`` with a secret name, a
  bearer token, a JWT, an Azure ``AccountKey=``, AWS/GitHub/Slack/HF-style keys, private
  key blocks);
- ``scrub_text(text)`` for logs and job scripts, line by line, the same value rules.

``secrets_in(doc)`` says where a document carries one (the dotted keys), so that a batch
job, whose plan is read back from the bundle, is refused rather than run with a redacted
command.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

_SECRET_NAME = re.compile(
    r"(TOKEN|SECRET|PASSW(OR)?D|PASSPHRASE|PWD_|_PWD$|^PWD_|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|"
    r"(^|_)KEY($|_)|AUTH|COOKIE|SESSION|SIGNATURE|CERT_?KEY|DSN|WEBHOOK|SALT|(^|_)PASS($|_)|SSHPASS|(^|_)PW($|_)|"
    r"ACCOUNT_?KEY|CONN(ECTION)?_?STR)",
    re.IGNORECASE,
)
# names that contain KEY-like words but are not secrets
_SAFE_NAMES = {"PWD", "OLDPWD", "KEYMAP", "XAUTHORITY_UNUSED", "SSH_AUTH_SOCK", "KIT_RUN_ID"}

_VALUE_PATTERNS = [
    (re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s/]+)(?P<post>@)"), "url-password"),
    (re.compile(r"(?P<pre>)(?P<secret>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})(?P<post>)"), "jwt"),
    (re.compile(r"(?P<pre>(?i:AccountKey|SharedAccessKey|SharedAccessSignature|sig|Password|Pwd)=)(?P<secret>[^;&\s]+)(?P<post>)"),
     "connection-string"),
    (re.compile(r"(?P<pre>(?i:bearer|basic|token)\s+)(?P<secret>[A-Za-z0-9._~+/=-]{8,})(?P<post>)"), "auth-header"),
    (re.compile(r"(?P<pre>)(?P<secret>AKIA[0-9A-Z]{16})(?P<post>)"), "aws-key"),
    (re.compile(r"(?P<pre>)(?P<secret>gh[pousr]_[A-Za-z0-9]{20,})(?P<post>)"), "github-token"),
    (re.compile(r"(?P<pre>)(?P<secret>github_pat_[A-Za-z0-9_]{20,})(?P<post>)"), "github-token"),
    (re.compile(r"(?P<pre>)(?P<secret>xox[abprs]-[A-Za-z0-9-]{10,})(?P<post>)"), "slack-token"),
    (re.compile(r"(?P<pre>)(?P<secret>hf_[A-Za-z0-9]{20,})(?P<post>)"), "hf-token"),
    (re.compile(r"(?P<pre>)(?P<secret>sk-[A-Za-z0-9_-]{20,})(?P<post>)"), "api-key"),
    (re.compile(r"(?P<pre>)(?P<secret>-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----)(?P<post>)"), "private-key"),
    (re.compile(r"(?P<pre>(?i:password|passwd|pwd|secret|token|api_key|apikey)=)(?P<secret>[^&\s;]+)(?P<post>)"), "query-secret"),
]


# NAME=value inside a string (a shell line, a job script, `env NAME=value cmd`), NAME secret
_ASSIGNMENT = re.compile(r"(?<![A-Za-z0-9_])(?P<name>[A-Z][A-Z0-9_]*)=(?P<q>['\"]?)(?P<secret>[^\s'\"]+)")
_ENV_STYLE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def is_secret_name(name: str) -> bool:
    return name not in _SAFE_NAMES and bool(_SECRET_NAME.search(name))


def _assignment(m: re.Match) -> str:
    if not is_secret_name(m.group("name")) or m.group("secret") == REDACTED:
        return m.group(0)
    return f"{m.group('name')}={m.group('q')}{REDACTED}"


def redact_value(value: str) -> str:
    for pattern, _ in _VALUE_PATTERNS:
        value = pattern.sub(lambda m: f"{m.group('pre')}{REDACTED}{m.group('post')}", value)
    return _ASSIGNMENT.sub(_assignment, value)


def scrub(doc: Any, found: list[str] | None = None, where: str = "") -> Any:
    """A copy of a JSON/YAML-shaped document with every secret redacted (see the module
    docstring); ``found`` collects the dotted keys where something was."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            here = f"{where}.{k}" if where else str(k)
            if isinstance(k, str) and _ENV_STYLE.match(k) and is_secret_name(k) and isinstance(v, (str, int, float)) \
                    and v != REDACTED:
                out[k] = REDACTED
                if found is not None:
                    found.append(here)
            else:
                out[k] = scrub(v, found, here)
        return out
    if isinstance(doc, (list, tuple)):
        if doc and all(isinstance(x, str) for x in doc):
            out_list = redact_argv(list(doc))
            if found is not None and out_list != list(doc):
                found.append(where or "(list)")
            return out_list
        return [scrub(x, found, f"{where}[{i}]") for i, x in enumerate(doc)]
    if isinstance(doc, str):
        out_s = redact_value(doc)
        if found is not None and out_s != doc:
            found.append(where or "(text)")
        return out_s
    return doc


def secrets_in(doc: Any) -> list[str]:
    """The dotted keys of ``doc`` that hold a secret."""
    found: list[str] = []
    scrub(doc, found)
    return found


def scrub_text(text: str) -> str:
    """``text`` (a log, a job script) with secret values masked, line by line."""
    return "".join(redact_value(line) for line in text.splitlines(keepends=True))


def redact_env(env: dict[str, str]) -> dict[str, str]:
    """A copy of ``env`` safe to share."""
    return {k: (REDACTED if is_secret_name(k) else redact_value(v)) for k, v in sorted(env.items())}


def redact_argv(argv: list[str]) -> list[str]:
    out, hide_next = [], False
    for a in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if a.startswith("--") and "=" in a and is_secret_name(a[2:].split("=", 1)[0].replace("-", "_")):
            out.append(a.split("=", 1)[0] + "=" + REDACTED)
        elif a.startswith("--") and is_secret_name(a[2:].replace("-", "_")):
            out.append(a)
            hide_next = True
        else:
            out.append(redact_value(a))
    return out
