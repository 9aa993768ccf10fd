"""Secrets never reach a bundle: names and values are redacted."""

import pytest

from kit.redact import REDACTED, is_secret_name, redact_argv, redact_env, redact_value

SECRET_VARS = {
    "GITHUB_TOKEN": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyzABCD",
    "HUGGING_FACE_HUB_TOKEN": "hf_abcdefghijklmnopqrstuvwxyzABCD",
    "WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEJr//////////wEaDK",
    "OPENAI_API_KEY": "sk-proj-abcdefghijklmnopqrstuvwxyz",
    "DB_PASSWORD": "hunter2",
    "MYSQL_PWD": "hunter2",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXX",
    "GOOGLE_APPLICATION_CREDENTIALS": "/home/u/creds.json",
    "NPM_AUTH": "abc",
    "PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----",
    "SSH_PASSPHRASE": "correct horse",
    "CLIENT_SECRET": "s3cr3t",
    "MLFLOW_TRACKING_PASSWORD": "pw",
    "SENTRY_DSN": "https://key@o0.ingest.sentry.io/0",
    "COOKIE_JAR": "session=abc",
}

SECRET_VALUES_UNDER_HARMLESS_NAMES = {
    "DATABASE_URL": ("postgres://admin:hunter2@db:5432/x", "hunter2"),
    "PIP_INDEX_URL": ("https://user:pa55word@pypi.example.org/simple", "pa55word"),
    "HTTPS_PROXY": ("http://bob:proxy-pass@proxy:3128", "proxy-pass"),
    "MY_VAR": ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
    "NOTES": ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", "eyJhbGciOiJIUzI1NiJ9.payload"),
    "CALLBACK": ("https://x.example/cb?user=a&token=abcdef123&x=1", "abcdef123"),
    "SOMETHING": ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
}

HARMLESS = {"HOME": "/root", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "12", "LD_PRELOAD": "/usr/lib/libtcmalloc.so.4",
            "PWD": "/work", "SLURM_JOB_ID": "42", "KIT_RUN_ID": "20260101-000000_x_abc", "MONKEY": "banana",
            "PJM_JOBID": "123", "HTTP_PROXY": "http://proxy:3128"}


@pytest.mark.parametrize("name", sorted(SECRET_VARS))
def test_secret_names_are_redacted(name):
    assert is_secret_name(name)
    assert redact_env({name: SECRET_VARS[name]})[name] == REDACTED


@pytest.mark.parametrize("name", sorted(SECRET_VALUES_UNDER_HARMLESS_NAMES))
def test_secret_values_are_masked_whatever_the_name(name):
    value, secret = SECRET_VALUES_UNDER_HARMLESS_NAMES[name]
    out = redact_env({name: value})[name]
    assert secret not in out and REDACTED in out


def test_harmless_variables_are_kept():
    assert redact_env(HARMLESS) == dict(sorted(HARMLESS.items()))


def test_url_keeps_host_and_user():
    assert redact_value("postgres://admin:pw@db:5432/x") == f"postgres://admin:{REDACTED}@db:5432/x"


def test_argv_secrets_are_redacted():
    argv = ["train.py", "--api-key", "abc123", "--token=xyz", "--layers", "2", "https://u:pw@h/x"]
    out = redact_argv(argv)
    assert out == ["train.py", "--api-key", REDACTED, f"--token={REDACTED}", "--layers", "2", f"https://u:{REDACTED}@h/x"]
