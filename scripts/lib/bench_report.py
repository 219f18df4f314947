"""The report of one `scripts/bench` run: table.md and chart.svg from results.csv.

scripts/bench measures and appends one row per value to results.csv
(round,job,system,value,unit); this reads it back, prints and writes the
tables (medians and min-max over the rounds, ratios against the peers of
the same run) and the ratio chart, and exits 1 when the run has holes (a
job without a positive value for some system in some round) or, under
KVM, a guest row misses its target. The table is written either way, so
a failed run still shows what it measured.

Usage (from the repository root, as scripts/bench calls it):
  python3 scripts/lib/bench_report.py --csv FILE --out DIR --rss-kib N
      --rounds N --jobs a,b,... --rekey-sizes "1 64 256" --test-name NAME
      [--mount-options OPTS]
"""

import argparse
import csv
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys

SYSTEMS = ["raw", "bindfs", "gocryptfs", "vmc-enc", "vmc-plain"]
GUEST_SYSTEMS = ["raw", "qemu-luks", "gocryptfs", "vmc-enc", "vmc-plain"]
GUEST_ROWS = ["seqwrite-1m", "seqread-1m", "randread-4k-qd32", "randwrite-4k-qd32", "randwrite-4k-fsync"]
SCALE_ROWS = [
    ("scale-vm-create", "`vm create` of every VM, in a loop"),
    ("scale-rekey-all-unmounted", "`rekey --all` unmounted"),
    ("scale-rekey-all-control", "`echo rekey-all > MNT/.control`"),
    ("scale-cat-control-first", "first `cat MNT/.control` after mounting"),
    ("scale-cat-control", "`cat MNT/.control` (median of 5)"),
    ("scale-cat-control-json", "`cat MNT/.control.json` (median of 5)"),
    ("scale-status", "`vmcryptfs status` (median of 3)"),
    ("scale-mount-peak-rss", "mount peak RSS, a file of every VM open"),
    ("scale-first-read-every-vm", "fresh mount: first read of a file of every VM, 32 in parallel"),
    ("scale-first-read-store-opens", "key store openings during those first reads"),
    ("scale-kmip-vm-create", "KMIP provider (PyKMIP): `vm create` of every VM, in a loop"),
    ("scale-kmip-rekey-all-unmounted", "KMIP provider (PyKMIP): `rekey --all` unmounted, `wrap = server`"),
    ("scale-kmip-rekey-all-unmounted-wrap-local", "KMIP provider (PyKMIP): `rekey --all` unmounted, `wrap = local`"),
]


def number(text):
    """A CSV value as a number; 0.0 for an empty or unreadable one (a
    failed measurement), which the checks below report."""
    try:
        return float(text)
    except ValueError:
        return 0.0


class Results:
    """The values of one run, by (job, system), in the order jobs first appear."""

    def __init__(self, path):
        rows = list(csv.DictReader(open(path)))
        self.jobs, self.units, self.vals = [], {}, {}
        # A run with holes would print medians and ratios over fewer rounds
        # than it says, so every job must have a positive value for every
        # system it runs on in every round.
        self.problems = []
        self.scale = [r for r in rows if r["job"].startswith("scale-")]
        for r in self.scale:
            if not number(r["value"]) > 0:
                self.problems.append(f"{r['job']} at {r['system']} VM homes gave no value ({r['value']!r})")
        for r in rows:
            if r["job"].startswith("scale-"):
                continue
            value = number(r["value"])
            if not value > 0:
                self.problems.append(f"round {r['round']}: {r['job']} on {r['system']} gave no value ({r['value']!r})")
                continue
            if r["job"] not in self.jobs:
                self.jobs.append(r["job"])
            self.units[r["job"]] = r["unit"]
            self.vals.setdefault((r["job"], r["system"]), []).append(value)

    def check_complete(self, job_list, rekey_sizes, rounds):
        """Adds a problem for every (row, system) the jobs asked for that
        lacks a value from some round."""
        expected = []
        for j in job_list:
            if j == "rekey":
                expected += [(f"rekey-{mb}MiB{p90}", "vmc-enc") for mb in rekey_sizes for p90 in ("", "-p90")]
            elif j == "fsck":
                expected += [(f"{c}-f{f}", s) for c in ("fsck", "scrub") for f in (1, 2) for s in ("raw", "vmc-enc")]
            elif j == "scale":
                pass
            elif j == "guest":
                expected += [(f"guest-{row}", s) for row in GUEST_ROWS for s in GUEST_SYSTEMS]
            elif j in ("meta", "meta-journal"):
                expected += [(f"{j}-{phase}", s) for phase in ("create", "ls", "rm") for s in SYSTEMS]
            else:
                expected += [(j, s) for s in SYSTEMS if not (j == "deeprekey" and s == "vmc-plain")]
        for j, s in expected:
            have = len(self.vals.get((j, s), []))
            if have != rounds:
                self.problems.append(f"{j} on {s}: values from {have} of {rounds} rounds")

    def med(self, j, s):
        v = self.vals.get((j, s))
        return statistics.median(v) if v else None

    def fmt(self, j, s):
        v = self.vals.get((j, s))
        if not v:
            return "-"
        return f"{statistics.median(v):g} ({min(v):g}–{max(v):g})"


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "-"


def header_line(out, mount_options, test_name):
    cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
    # The mount's read-ahead decision depends on the disk, so the table says it.
    read_ahead = next((l.split("read-ahead: ", 1)[1].strip() for l in open(f"{out}/vmcryptfs-mount.log", errors="replace") if "read-ahead: " in l), "not logged")
    return (f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu}, {subprocess.getoutput('nproc')} cores, Linux {platform.release()}, commit {subprocess.getoutput('git rev-parse --short HEAD')}, vmcryptfs mounted with "
            + (f"`-o {mount_options}`" if mount_options else "its defaults")
            + f". Read-ahead: {read_ahead}. fio's file: `{test_name}`. Medians (min–max) of the rounds.")


def host_table(res):
    """The host jobs' table lines, and the chart's bars: (job, enc /
    gocryptfs, enc / bindfs)."""
    host_jobs = [j for j in res.jobs if not j.startswith(("rekey", "guest-", "fsck", "scrub"))]
    lines, chart = [], []
    if host_jobs:
        lines += ["",
                  "| job | unit | raw | bindfs | gocryptfs | vmcryptfs enc | vmcryptfs plain | enc / gocryptfs | enc / bindfs | plain / raw |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    for j in host_jobs:
        e, g, b, p, r = (res.med(j, s) for s in ["vmc-enc", "gocryptfs", "bindfs", "vmc-plain", "raw"])
        lines.append(f"| {j} | {res.units[j]} | " + " | ".join(res.fmt(j, s) for s in SYSTEMS) + f" | {ratio(e, g)} | {ratio(e, b)} | {ratio(p, r)} |")
        chart.append((j, e / g if e and g else 0, e / b if e and b else 0))
    return lines, chart


def guest_table(res, out):
    """What a guest sees of each system, and the targets, which only mean
    something under KVM (TCG measures the emulator); a missed target is a
    problem of the run."""
    guest_jobs = [j for j in res.jobs if j.startswith("guest-")]
    if not guest_jobs:
        return []
    accel = open(f"{out}/guest-accel").read().strip()
    targets = accel == "kvm"
    lines = ["", f"Guest job: fio inside a Linux guest under **{accel}**, on its virtio disk (cache=none,aio=native), the raw disk image on each system. "
             + ("Targets: vmcryptfs enc ≥ 1.0× QEMU LUKS and ≥ 1.5× gocryptfs, passthrough ≥ 0.95× raw, on every row."
                if targets else "Under TCG these figures measure the emulator, not the storage: no target is checked."),
             "",
             "| guest row | unit | raw | QEMU LUKS | gocryptfs | vmcryptfs enc | vmcryptfs plain | enc / LUKS | enc / gocryptfs | plain / raw |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for j in guest_jobs:
        e, l, g, p, r = (res.med(j, s) for s in ["vmc-enc", "qemu-luks", "gocryptfs", "vmc-plain", "raw"])
        lines.append(f"| {j[len('guest-'):]} | {res.units[j]} | " + " | ".join(res.fmt(j, s) for s in GUEST_SYSTEMS) + f" | {ratio(e, l)} | {ratio(e, g)} | {ratio(p, r)} |")
        for name, a, b, floor in [("vmcryptfs enc / QEMU LUKS", e, l, 1.0), ("vmcryptfs enc / gocryptfs", e, g, 1.5), ("vmcryptfs plain / raw", p, r, 0.95)]:
            if targets and a and b and a / b < floor:
                res.problems.append(f"guest {j[len('guest-'):]}: {name} is {a / b:.3f}×, below the {floor}× target")
    return lines


def rekey_table(res):
    rekey_jobs = [j for j in res.jobs if j.startswith("rekey")]
    lines = []
    if rekey_jobs:
        lines += ["", "| shallow re-key | median ms (min–max over rounds) |", "|---|---|"]
    for j in rekey_jobs:
        lines.append(f"| {j} | {res.fmt(j, 'vmc-enc')} |")
    return lines


def check_table(res):
    fsck_jobs = [j for j in res.jobs if j.startswith(("fsck", "scrub"))]
    lines = []
    if fsck_jobs:
        lines += ["", "| check (target 0.8× of `cat`) | `cat` of the backing file, MiB/s | check, MiB/s | check / cat |", "|---|---|---|---|"]
        for j in sorted(fsck_jobs):
            what = "`vmcryptfs fsck` (unmounted)" if j.startswith("fsck") else "scrub, rate unlimited (mounted)"
            lines.append(f"| {what}, content format {j[-1]} | {res.fmt(j, 'raw')} | {res.fmt(j, 'vmc-enc')} | {ratio(res.med(j, 'vmc-enc'), res.med(j, 'raw'))} |")
    return lines


def scale_table(res):
    if not res.scale:
        return []
    sizes = sorted({int(r["system"]) for r in res.scale})
    # A failed measurement shows as "-" (and fails the run), rather than
    # ending the report before the table is written.
    by = {(r["job"], int(r["system"])): f"{number(r['value']):g} {r['unit']}" for r in res.scale if number(r["value"]) > 0}
    lines = ["", "| control plane (one run) | " + " | ".join(f"{n:,} VM homes" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for job, what in SCALE_ROWS:
        lines.append(f"| {what} | " + " | ".join(by.get((job, n), "-") for n in sizes) + " |")
    return lines


def chart_svg(chart):
    """A grouped bar chart of the ratios, as plain SVG, on a log scale with
    bars growing from 1.0x: the ratios run from about 0.5x to 15x, and on a
    linear axis everything near the targets (0.8x, 1.3x) would be a sliver."""
    w, h, pad, bar = 120 * max(len(chart), 1) + 80, 360, 50, 36
    lo = min([0.5] + [min(a, b) for _, a, b in chart if min(a, b) > 0]) / 1.2
    hi = max([4.0] + [max(a, b) for _, a, b in chart]) * 1.4
    y = lambda v: h - pad - math.log(max(v, lo) / lo) / math.log(hi / lo) * (h - 2 * pad)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="14">vmcryptfs (encrypted disks) throughput ratio, log scale: vs gocryptfs (blue), vs bindfs (orange)</text>']
    for ref in (0.5, 0.8, 1.0, 1.3, 2, 4, 8, 16):
        if lo < ref < hi:
            dash = "" if ref == 1.0 else ' stroke-dasharray="4 3"'
            svg.append(f'<line x1="{pad}" x2="{w-10}" y1="{y(ref):.1f}" y2="{y(ref):.1f}" stroke="#999"{dash}/><text x="5" y="{y(ref)+4:.1f}">{ref}×</text>')
    for i, (j, a, b) in enumerate(chart):
        x = pad + 20 + i * 120
        for k, (v, color) in enumerate(((a, "#3b6fb6"), (b, "#e08a2c"))):
            if v <= 0:
                continue
            top, bottom = min(y(v), y(1.0)), max(y(v), y(1.0))
            svg.append(f'<rect x="{x + k*bar}" y="{top:.1f}" width="{bar-4}" height="{max(bottom - top, 1):.1f}" fill="{color}"/>')
            label_y = y(v) - 4 if v >= 1 else y(v) + 14
            svg.append(f'<text x="{x + k*bar}" y="{label_y:.1f}">{v:.2f}</text>')
        svg.append(f'<text x="{x}" y="{h-pad+30}">{j}</text>')
    svg.append("</svg>")
    return "\n".join(svg)


def main():
    p = argparse.ArgumentParser(description="Writes table.md and chart.svg of one scripts/bench run.")
    p.add_argument("--csv", required=True, help="the run's results.csv")
    p.add_argument("--out", required=True, help="the run's result directory")
    p.add_argument("--rss-kib", type=int, required=True, help="the mount's peak RSS in KiB")
    p.add_argument("--mount-options", default="", help="the -o options of the vmcryptfs mount")
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--jobs", required=True, help="the jobs that ran, comma-separated")
    p.add_argument("--rekey-sizes", required=True, help="the re-key job's VM sizes in MiB, space-separated")
    p.add_argument("--test-name", required=True, help="the fio jobs' file name")
    args = p.parse_args()

    res = Results(args.csv)
    res.check_complete(args.jobs.split(","), args.rekey_sizes.split(), args.rounds)
    lines = [header_line(args.out, args.mount_options, args.test_name)]
    host, chart = host_table(res)
    lines += host
    lines += guest_table(res, args.out)
    lines += rekey_table(res)
    lines += check_table(res)
    lines += scale_table(res)
    lines += ["", f"Peak RSS of the vmcryptfs mount during the run: {args.rss_kib // 1024} MiB."]
    if os.path.exists(f"{args.out}/caches-not-dropped"):
        lines = ["**Caches could not be dropped (`/proc/sys/vm/drop_caches` not writable): every job ran warm, so the cold jobs do not measure the disk.**", ""] + lines
    table = "\n".join(lines) + "\n"
    open(f"{args.out}/table.md", "w").write(table)
    print(table)
    open(f"{args.out}/chart.svg", "w").write(chart_svg(chart))
    if res.problems:
        print(f"the run failed ({len(res.problems)} problems; raw values in {args.csv}):", file=sys.stderr)
        for problem in res.problems:
            print(f"  {problem}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
