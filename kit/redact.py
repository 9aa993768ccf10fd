"""Redaction of secrets from anything that goes into a bundle.

A bundle is shared, so the environment recorded in it is filtered: a variable whose *name*
looks secret (token, secret, password, key, credential, auth, cookie, session, ...) has its
value replaced, and a *value* that carries a secret whatever its name (a URL with a
password, a bearer token, an AWS/GitHub/Slack-style key) is masked in place.
"""

from __future__ import annotations

import re

REDACTED = "<redacted>"

_SECRET_NAME = re.compile(
    r"(TOKEN|SECRET|PASSW(OR)?D|PASSPHRASE|PWD_|_PWD$|^PWD_|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|"
    r"(^|_)KEY($|_)|AUTH|COOKIE|SESSION|SIGNATURE|CERT_?KEY|DSN|WEBHOOK|SALT)",
    re.IGNORECASE,
)
# names that contain KEY-like words but are not secrets
_SAFE_NAMES = {"PWD", "OLDPWD", "KEYMAP", "XAUTHORITY_UNUSED", "SSH_AUTH_SOCK", "KIT_RUN_ID"}

_VALUE_PATTERNS = [
    (re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)(?P<secret>[^@\s]+)(?P<post>@)"), "url-password"),
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


def is_secret_name(name: str) -> bool:
    return name not in _SAFE_NAMES and bool(_SECRET_NAME.search(name))


def redact_value(value: str) -> str:
    for pattern, _ in _VALUE_PATTERNS:
        value = pattern.sub(lambda m: f"{m.group('pre')}{REDACTED}{m.group('post')}", value)
    return value


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
