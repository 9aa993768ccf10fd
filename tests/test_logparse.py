"""One parser serves the built-in workload and a real Megatron-DeepSpeed run."""

from kit.logparse import parse_line, parse_lines, parse_memory_report

# Lines in Megatron-DeepSpeed's own training_log format (megatron/training.py), with the
# prefixes launchers add.
MEGATRON = (" iteration       10/     100 | consumed samples:        10240 | consumed tokens:     10485760 |"
            " elapsed time per iteration (ms): 1489700.3 | learning rate: 1.500E-04 | global batch size:  1024 |"
            " lm loss: 7.912345E+00 | loss scale: 1.0 | grad norm: 1.234 | actual seqlen:  1024 |"
            " number of skipped iterations:   0 | number of nan iterations:   0 | samples per second: 0.687 |"
            " TFLOPs: 0.56 |")


def test_megatron_line():
    rec = parse_line(MEGATRON)
    assert (rec.iteration, rec.total) == (10, 100)
    assert rec.fields["elapsed_ms"] == 1489700.3 and rec.elapsed_s == 1489.7003
    assert rec.fields["loss"] == 7.912345
    assert rec.fields["samples_per_sec"] == 0.687
    assert rec.fields["tflops"] == 0.56
    assert rec.fields["global_batch"] == 1024
    assert rec.fields["seq"] == 1024


def test_launcher_prefixes():
    for prefix in ("[default0]:", "0: ", "[1,0]<stdout>:", "[rank3]: "):
        rec = parse_line(prefix + MEGATRON)
        assert rec is not None and rec.iteration == 10


def test_non_iteration_lines_are_ignored():
    assert parse_line("kit-workload: world_size=1") is None
    assert parse_line("validation loss at iteration 10 | lm loss value: 7.9 |") is None


def test_missing_fields_are_absent_not_guessed():
    rec = parse_line(" iteration        3/      20 | lm loss: 1.0E+01 |")
    assert rec.elapsed_s is None and "tflops" not in rec.fields


def test_repeated_iteration_last_wins_and_sorted():
    recs = parse_lines([MEGATRON.replace("10/", "2/"), MEGATRON.replace("10/", "1/"), MEGATRON.replace("10/", "2/").replace("0.56", "0.60")])
    assert [r.iteration for r in recs] == [1, 2]
    assert recs[1].fields["tflops"] == 0.60


def test_megatron_memory_reports():
    # megatron/training/utils.py report_memory, after a torchrun prefix
    gpu = parse_memory_report("[default1]:[Rank 1] (after 10 iterations) memory (MB) | allocated: 1520.25 |"
                              " max allocated: 9321.5 | reserved: 10240.0 | max reserved: 10240.0")
    assert gpu.rank == 1 and gpu.device == "cuda"
    assert gpu.fields == {"allocated": 1520.25, "max_allocated": 9321.5, "reserved": 10240.0, "max_reserved": 10240.0}
    cpu = parse_memory_report("[Rank 0] CPU memory (MB) | used: 7718.0 | available: 20000.0")
    assert (cpu.rank, cpu.device, cpu.fields["used"]) == (0, "cpu", 7718.0)
    old = parse_memory_report("(after 5 iterations) memory (MB) | allocated: 1.0 | max allocated: 2.0")  # print_rank_0
    assert old.rank is None and old.fields["max_allocated"] == 2.0
    assert parse_memory_report(MEGATRON) is None
    assert parse_memory_report("memory (MB) | allocated: n/a") is None
