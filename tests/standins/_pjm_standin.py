"""Shared code of the PJM stand-ins (tests only; see README.md)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("PJM_STANDIN_DIR", "/tmp/pjm-standin"))


def _next_id() -> str:
    ROOT.mkdir(parents=True, exist_ok=True)
    counter = ROOT / "counter"
    n = int(counter.read_text()) + 1 if counter.exists() else 1000
    counter.write_text(str(n))
    return str(n)


def _directives(text: str) -> dict:
    d = {"node": "1", "proc": "1", "ppn": "1", "o": None, "spath": None, "name": "job"}
    for line in text.splitlines():
        if not line.startswith("#PJM"):
            continue
        rest = line[4:].strip()
        for key, pat in (("node", r'-L\s+"?node=(\d+)'), ("proc", r'--mpi\s+"?proc=(\d+)'),
                         ("ppn", r'--mpi\s+"?max-proc-per-node=(\d+)'), ("o", r"^-o\s+(\S+)"),
                         ("spath", r"^--spath\s+(\S+)"), ("name", r"^-N\s+(\S+)")):
            m = re.search(pat, rest)
            if m:
                d[key] = m.group(1).strip("'\"")
    return d


def pjsub(argv):
    script = Path(argv[-1]).resolve()
    text = script.read_text()
    d = _directives(text)
    jid = _next_id()
    jdir = ROOT / jid
    jdir.mkdir()
    (jdir / "script.sh").write_text(text)
    out = Path((d["o"] or f"{d['name']}.{jid}.out").replace("%j", jid))
    stats = Path((d["spath"] or f"{d['name']}.{jid}.stats").replace("%j", jid))
    nodeinf = jdir / "nodeinf"
    nodeinf.write_text("127.0.0.1\n")
    env = {**os.environ, "PJM_JOBID": jid, "PJM_JOBNAME": d["name"], "PJM_MPI_PROC": d["proc"],
           "PJM_PROC_BY_NODE": d["ppn"], "PJM_NODE": d["node"], "PJM_O_WORKDIR": os.getcwd(),
           "PJM_O_NODEINF": str(nodeinf)}
    state = {"id": jid, "name": d["name"], "st": "RUN", "stats": str(stats)}
    (jdir / "state.json").write_text(json.dumps(state))
    # a detached runner: runs the script, then records EXT and the statistics file
    runner = (f"import json,subprocess,sys,pathlib; p=pathlib.Path({str(jdir)!r}); "
              f"o=open({str(out)!r},'w'); r=subprocess.run(['bash',{str(script)!r}],stdout=o,stderr=subprocess.STDOUT); "
              f"s=json.loads((p/'state.json').read_text()); "
              f"s['st']='CCL' if s['st']=='CCL' else 'EXT'; s['ec']=r.returncode; (p/'state.json').write_text(json.dumps(s)); "
              f"pathlib.Path({str(stats)!r}).write_text("
              f"' JOB ID                        : {jid}\\n EXIT CODE                     : %d\\n PJM CODE                      : %d\\n REASON                        : %s\\n'"
              f" % (r.returncode, 0 if s['st']=='EXT' else 1, '-' if s['st']=='EXT' else 'DELETED BY pjdel'))")
    stats.parent.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", runner], env=env, cwd=os.getcwd(), start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state["pgid"] = p.pid
    (jdir / "state.json").write_text(json.dumps(state))
    print(f"[INFO] PJM 0000 pjsub Job {jid} submitted.")
    return 0


def pjstat(argv):
    ids = [a for a in argv if a.isdigit()]
    print("  JOB_ID     JOB_NAME   MD ST  USER     START_DATE      ELAPSE_LIM NODE_REQUIRE")
    for jid in ids:
        f = ROOT / jid / "state.json"
        if f.exists():
            s = json.loads(f.read_text())
            print(f"  {jid:<10} {s['name'][:10]:<10} NM {s['st']} user     -               0001:00:00 1")
    return 0


def pjdel(argv):
    jid = argv[-1]
    f = ROOT / jid / "state.json"
    if not f.exists():
        print(f"[ERR.] PJM 0050 pjdel Job {jid} does not exist.", file=sys.stderr)
        return 1
    s = json.loads(f.read_text())
    s["st"] = "CCL"
    f.write_text(json.dumps(s))
    try:
        os.killpg(s["pgid"], signal.SIGTERM)
    except ProcessLookupError:
        pass
    print(f"[INFO] PJM 0100 pjdel Accepted job {jid}.")
    return 0


def mpiexec(argv):
    n, prefix, sets, i = 1, None, {}, 0
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        if a in ("-np", "-n"):
            n = int(argv[i + 1]); i += 2
        elif a in ("-std-proc", "-of-proc"):
            prefix = argv[i + 1]; i += 2
        elif a == "-x":
            k, eq, v = argv[i + 1].partition("=")
            sets[k] = v if eq else os.environ.get(k, "")
            i += 2
        else:
            i += 1
    cmd = argv[i:]
    procs = []
    for r in range(n):
        # as Fujitsu MPI's PMIx: only PMIX_RANK is given to each rank (a public user's log
        # showed PLE_*/OMPI_COMM_WORLD_*/PMIX_SIZE empty); the rest comes from the -x list
        env = {**os.environ, **sets, "PMIX_RANK": str(r)}
        out = None
        if prefix:
            # -std-proc path patterns: %j job id, %m mpiexec number, %/1000r rank / 1000
            path = Path(prefix.replace("%j", os.environ.get("PJM_JOBID", "0")).replace("%m", "1")
                        .replace("%/1000r", str(r // 1000)) + f".1.{r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            out = open(path, "w")
        procs.append(subprocess.Popen(cmd, env=env, stdout=out or None, stderr=subprocess.STDOUT if out else None))
    signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in procs])
    rc = 0
    while any(p.poll() is None for p in procs):
        for r, p in enumerate(procs):
            if p.poll() not in (None, 0) and rc == 0:
                rc = p.returncode
                print(f"[mpi::mpi-errors::mpi_abort] rank {r} exited with status {rc}", flush=True)
                for q in procs:
                    if q.poll() is None:
                        q.terminate()
        time.sleep(0.2)
    for r, p in enumerate(procs):
        if p.returncode and rc == 0:
            rc = p.returncode
            print(f"[mpi::mpi-errors::mpi_abort] rank {r} exited with status {rc}", flush=True)
    return rc if rc >= 0 else 128 - rc
