"""Job options (--time, --queue, --account, --llio) are checked against strict formats before
any job script is written: an injection attempt is refused with exit 2 and one line naming
the option and the accepted format; accepted values reach the script unchanged."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from conftest import kit_cli
from kit import jobopts, plan as plan_mod, schedulers
from kit.errors import KitError

INJECTIONS = [
    "01:00:00\n#SBATCH --wrap=id",
    "proj\n#SBATCH --uid=0",
    "proj #SBATCH --partition=x",
    "$(touch /tmp/pwned)",
    "`id`",
    "proj;id",
    "proj && id",
    "proj\r",
    "proj\x1b[2J",
    "proj\x00",
    "a b",
    "",
    "-proj",
    "x" * 65,
    "٣",  # a non-ASCII digit/letter: Unicode classes are not accepted
]


@pytest.mark.parametrize("field,option", [("queue", "--queue"), ("account", "--account")])
@pytest.mark.parametrize("value", INJECTIONS)
def test_identifier_injection_refused(field, option, value):
    with pytest.raises(KitError) as e:
        plan_mod.JobOptions(**{field: value})
    assert str(e.value).startswith(f"{option}: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("value", INJECTIONS + ["01:00:00;id", "1:00:00 ", "60", "01:60:00", "1-24:00:00",
                                                "01:00:60", "-1:00:00", "01:00:00\n"])
def test_time_injection_or_bad_form_refused(value):
    with pytest.raises(KitError, match=r"^--time: .*HH:MM:SS"):
        plan_mod.JobOptions(time_limit=value)


@pytest.mark.parametrize("value", INJECTIONS + ["localtmp-size=50Gi\n#PJM -L node=1000", "localtmp-size=$(id)",
                                                "localtmp-size=1Gi;id", "Localtmp-size=1Gi", "a=b,", "=1Gi",
                                                "a=b c", "a==b"])
def test_llio_injection_refused(value):
    with pytest.raises(KitError, match=r"^--llio: "):
        plan_mod.JobOptions(llio=["perf", value])


@pytest.mark.parametrize("value", ["01:00:00", "24:00:00", "100:00:00", "30:00", "1-00:00:00", "2-12", "2-12:30"])
def test_time_forms_accepted(value):
    assert plan_mod.JobOptions(time_limit=value).time_limit == value


def test_llio_forms_accepted():
    llio = ["localtmp-size=50Gi", "sharedtmp-size=10Gi,sio-read-cache=on", "perf", "perf-path=/vol0004/x/perf.txt"]
    assert plan_mod.JobOptions(llio=llio, account="hp190122", queue="small-free").llio == llio


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_no_accepted_value_can_break_a_script_line(value):
    """Whatever is accepted holds no whitespace, control character or shell metacharacter."""
    for check in (lambda v: jobopts.check_time(v), lambda v: jobopts.check_identifier(v, "--queue"),
                  lambda v: jobopts.check_llio([v])):
        try:
            check(value)
        except KitError:
            continue
        assert value.isascii() and value.isprintable()
        assert not set(value) & set(" \t\r\n\x0b\x0c;&|$`'\"\\<>(){}*?#!~")


def test_options_from_a_plan_file_are_checked_too(tmp_path):
    """A bundle's plan.json (kit collect / job-run read it back) cannot carry an injected option."""
    p = plan_mod.resolve(recipe_name="tiny", launcher="slurm", job=plan_mod.JobOptions(account="proj"))
    text = p.model_dump_json().replace('"account":"proj"', '"account":"proj\\n#SBATCH --uid=0"')
    f = tmp_path / "plan.json"
    f.write_text(text)
    with pytest.raises(KitError, match="^--account: "):
        plan_mod.load(f)


@pytest.mark.parametrize("args,option", [
    (["--launcher", "slurm", "--account", "proj\n#SBATCH --wrap=id"], "--account"),
    (["--launcher", "slurm", "--time", "01:00:00\n#SBATCH --wrap=id"], "--time"),
    (["--launcher", "slurm", "--queue", "debug;id"], "--queue"),
    (["--launcher", "pjm", "--llio", "localtmp-size=$(id)"], "--llio"),
])
def test_cli_refuses_with_one_line_and_exit_2(args, option):
    proc = kit_cli("run", "tiny", *args, "--dry-run", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "Traceback" not in proc.stderr
    assert "#SBATCH" not in proc.stdout and "#PJM" not in proc.stdout  # no script was printed


def test_accepted_options_reach_the_slurm_script_verbatim():
    p = plan_mod.resolve(recipe_name="tiny", launcher="slurm",
                         job=plan_mod.JobOptions(time_limit="1-12:00:00", queue="gpu-a100", account="proj_01"))
    lines = schedulers.get("slurm").render(p, plan_mod.Path("/r/b1")).splitlines()
    assert {"#SBATCH --time=1-12:00:00", "#SBATCH --partition=gpu-a100", "#SBATCH --account=proj_01"} <= set(lines)
