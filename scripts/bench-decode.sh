#!/usr/bin/env bash
# The decode sweep of issue 15, measured on the CPU backend: every scenario of DESIGN.md
# section 7 at tokens per device 1, 16, 64, 256, 1024, 4096 and the paper's 32768 (scaled),
# for the gpt-oss-120b and DeepSeek-V3 shapes, P 8, under each planner of PLANNERS, with
# llep-bench --planners (busy times include the weight copies; replica cache off, so every step
# copies them). Prints one table per shape and writes each run's --json to OUT.
#
#   bash scripts/bench-decode.sh [--json]
#
# Environment: LLEP_BUILD_DIR (a build with tools/llep-bench; default build), PLANNERS
# (default ep,lla,lla-scaled), SIZES (default "1 16 64 256 1024 4096 paper"), SHAPES (default
# "gpt-oss-120b deepseek-v3"), REPEAT_SMALL / REPEAT_LARGE (rounds at up to 256 tokens and
# above; default 11 and 5), OUT (default a new temporary directory), SUMMARY_ONLY=1 (print the
# tables from the JSON already in OUT, without running anything).
#
# Scaling, so that it runs on two cores: gpt-oss-120b has D and H divided by 16 (D = H = 180),
# DeepSeek-V3 by 32 (D 224, H 64); N, K and P are the models'. The token counts 1 to 4096 are
# run as they are with the paper's m = 1024. The paper's row ("paper": 32768 tokens per device
# for gpt-oss, 16384 for DeepSeek-V3) divides the tokens and m by the same factor as D and H
# (2048 tokens and m 64 for gpt-oss; 512 and m 32 for DeepSeek-V3): LLA's plans depend on the
# loads only through their ratios to the capacity and to m, so the plans are those of the
# paper's batch, on a smaller layer.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${LLEP_BUILD_DIR:-build}/tools/llep-bench
planners=${PLANNERS:-ep,lla,lla-scaled}
sizes=${SIZES:-1 16 64 256 1024 4096 paper}
shapes=${SHAPES:-gpt-oss-120b deepseek-v3}
out=${OUT:-$(mktemp -d /tmp/bench-decode.XXXXXX)}
json=0
[ "${1:-}" = --json ] && json=1
mkdir -p "$out"
[ -x "$bench" ] || [ "${SUMMARY_ONLY:-0}" = 1 ] || {
  echo "bench-decode.sh: $bench not built" >&2; exit 2; }

for shape in $shapes; do
  [ "${SUMMARY_ONLY:-0}" = 1 ] && break
  case $shape in
    gpt-oss-120b) scale=16 paper=32768 ;;
    deepseek-v3) scale=32 paper=16384 ;;
    *) echo "bench-decode.sh: unknown shape $shape" >&2; exit 2 ;;
  esac
  for t in $sizes; do
    if [ "$t" = paper ]; then tok=$((paper / scale)) m=$((1024 / scale)); else tok=$t m=1024; fi
    rep=${REPEAT_SMALL:-11}
    [ "$tok" -gt 256 ] && rep=${REPEAT_LARGE:-5}
    f="$out/$shape-$t.json"
    echo "bench-decode.sh: $shape, $t tokens per device ($tok run, m $m, $rep rounds) -> $f" >&2
    "$bench" --preset "$shape" --scale "$scale" --tokens "$tok" --min-tokens "$m" \
      --repeat "$rep" --planners "$planners" --json > "$f" 2> "$out/$shape-$t.log"
  done
done

python3 - "$out" "$json" "$shapes" "$sizes" <<'PY'
import json, sys
out, as_json, shapes, sizes = sys.argv[1], sys.argv[2] == "1", sys.argv[3].split(), sys.argv[4].split()
rows = []
for shape in shapes:
    for t in sizes:
        d = json.load(open(f"{out}/{shape}-{t}.json"))
        for s in d["scenarios"]:
            for pl, r in s["runs"].items():
                rows.append(dict(shape=shape, size=t, tokens_run=d["tokens_per_device"],
                                 min_tokens=d["min_tokens"], hidden=d["hidden"],
                                 inter=d["inter"], scenario=s["scenario"], ideal=s["ideal"],
                                 planner=pl, **r))
if as_json:
    json.dump({"out": out, "rows": rows}, sys.stdout, indent=1)
    print()
    sys.exit(0)
planners = list(dict.fromkeys(r["planner"] for r in rows))
slower = [r for r in rows if r["verdict"] != "ok"]
for shape in shapes:
    rs = [r for r in rows if r["shape"] == shape]
    print(f"\n{shape}: speedup over ep (makespan, weight copies counted) per planner; "
          f"'!' = slower than ep beyond 3 %; ideal = EP's largest device load / mean")
    print(f"{'tokens':>6} {'scenario':<9} {'ideal':>6} {'ep ms':>9} " +
          " ".join(f"{p:>11}" for p in planners if p != "ep"))
    for t in sizes:
        for r0 in (r for r in rs if r["size"] == t and r["planner"] == "ep"):
            cells = []
            for p in planners:
                if p == "ep":
                    continue
                r = next(x for x in rs if x["size"] == t and x["scenario"] == r0["scenario"]
                         and x["planner"] == p)
                cells.append(f"{r['speedup']:>9.2f}x{'!' if r['verdict'] != 'ok' else ' '}")
            label = f"{t}" if t != "paper" else f"{r0['tokens_run']}*"
            print(f"{label:>6} {r0['scenario']:<9} {r0['ideal']:>6.2f} "
                  f"{r0['makespan_ns'] / 1e6:>9.3f} " + " ".join(cells))
# One line per scenario, one column per size: each planner's speedup over ep, '/' between them.
others = [p for p in planners if p != "ep"]
for shape in shapes:
    rs = [r for r in rows if r["shape"] == shape]
    print(f"\n{shape}, compact: speedup over ep of {' / '.join(others)} per tokens per device "
          f"('!': slower than ep beyond 3 %)")
    labels = [t if t != "paper" else
              f"{next(r['tokens_run'] for r in rs if r['size'] == t)}*" for t in sizes]
    print(f"{'scenario':<9}" + "".join(f"{l:>{7 * len(others) + 2}}" for l in labels))
    for sc in dict.fromkeys(r["scenario"] for r in rs):
        line = f"{sc:<9}"
        for t in sizes:
            cell = "/".join(
                f"{r['speedup']:.2f}{'!' if r['verdict'] != 'ok' else ''}"
                for p in others for r in rs
                if r["size"] == t and r["scenario"] == sc and r["planner"] == p)
            line += f"{cell:>{7 * len(others) + 2}}"
        print(line)

# The paper's Figure 4 (speedup of LLEP over EP, 8 x H200, 32K tokens per GPU for gpt-oss-120b,
# 16K for DeepSeek-V3, lambda 1.3, alpha 1, m 1024): the bar labels of llep_paper.pdf in
# github.com/SalesforceAIResearch/LeastLoadedEP (commit 0349746), read with pdftotext -bbox
# and matched to the bars by position. The balanced bar is one value drawn in every group.
paper = {
    "gpt-oss-120b": {"balanced": 1.07, "30%-16": 1.73, "30%-4": 2.09, "30%-1": 2.41,
                     "50%-16": 2.85, "50%-4": 3.05, "50%-1": 3.48, "80%-16": 4.37,
                     "80%-4": 4.47, "80%-1": 5.26, "95%-16": 5.19, "95%-4": 5.22, "95%-1": 6.11},
    "deepseek-v3": {"balanced": 0.92, "30%-16": 1.69, "30%-4": 1.76, "30%-1": 1.96,
                    "50%-16": 2.65, "50%-4": 2.83, "50%-1": 2.77, "80%-16": 3.83,
                    "80%-4": 3.64, "80%-1": 4.23, "95%-16": 4.59, "95%-4": 4.64, "95%-1": 5.13},
}
if "paper" in sizes:
    for shape in shapes:
        rs = [r for r in rows if r["shape"] == shape and r["size"] == "paper"]
        print(f"\nthe paper's table, {shape}: speedup over EP at the paper's batch (theirs: "
              f"8 x H200, Fig. 4; ours: CPU, scaled as above), and the fraction of two bounds: "
              f"%ideal of the token-slot bound (ideal), %work of the measured one (work: EP's "
              f"busy time summed over the devices / P)")
        head = f"{'scenario':<9} {'paper':>6} {'ideal':>6}"
        for p in planners:
            if p != "ep":
                head += f" {p:>11} {'%ideal':>6} {'%work':>6}"
        print(head)
        for r0 in (r for r in rs if r["planner"] == "ep"):
            line = f"{r0['scenario']:<9} {paper[shape][r0['scenario']]:>6.2f} {r0['ideal']:>6.2f}"
            for p in planners:
                if p == "ep":
                    continue
                r = next(x for x in rs if x["scenario"] == r0["scenario"] and x["planner"] == p)
                line += (f" {r['speedup']:>10.2f}x {100 * r['fraction_of_ideal']:>5.0f}%"
                         f" {100 * r['fraction_of_work']:>5.0f}%")
            print(line)
print(f"\n* the paper's batch scaled with D and H (m scaled likewise); JSON per run in {out}")
print(f"rows slower than ep beyond 3 %: {len(slower)}" +
      "".join(f"\n  {r['shape']} {r['size']} {r['scenario']} {r['planner']}: "
              f"{r['speedup']:.3f}x" for r in slower))
PY
