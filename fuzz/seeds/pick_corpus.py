#!/usr/bin/env python3
"""pick_corpus.py TARGET N: adds to the committed corpus (fuzz/corpus/TARGET)
the N inputs found by earlier scripts/fuzz.sh runs (fuzz/target/corpus/TARGET)
that add the most coverage features to it, picked greedily one at a time.
Keeps the committed corpus small while it still reaches what fuzzing reached.
Run scripts/fuzz.sh first (it builds the targets)."""
import hashlib, os, random, re, shutil, subprocess, sys, tempfile
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
t, n = sys.argv[1], int(sys.argv[2])
triple = re.search(r"host: (\S+)", subprocess.run(["rustc", "-vV"], capture_output=True, text=True).stdout).group(1)
bin_ = f"fuzz/target/{triple}/release/{t}"
committed = f"fuzz/corpus/{t}"
tmp = tempfile.mkdtemp(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
env = dict(os.environ, TMPDIR=tmp)
def ft(files):
    d = tempfile.mkdtemp(dir=tmp)
    for i, f in enumerate(files):
        shutil.copy(f, os.path.join(d, str(i)))
    out = subprocess.run([bin_, "-runs=0", "-max_len=70000", d], env=env, capture_output=True, text=True).stderr
    shutil.rmtree(d)
    m = re.findall(r"INITED.*?ft: (\d+)", out)
    return int(m[-1]) if m else 0
# Candidates: what a set-cover merge keeps from the work corpus beyond the seeds.
base_dir = os.path.join(tmp, "base"); shutil.copytree(committed, base_dir)
subprocess.run([bin_, "-merge=1", "-set_cover_merge=1", "-max_len=70000", base_dir, f"fuzz/target/corpus/{t}"], env=env, capture_output=True)
seeds = [os.path.join(committed, f) for f in os.listdir(committed)]
cands = [os.path.join(base_dir, f) for f in os.listdir(base_dir) if not os.path.exists(os.path.join(committed, f))]
random.seed(9)
alone = sorted(cands, key=lambda f: -ft([f]))[:25] if len(cands) <= 400 else None
if alone is None:
    sample = random.sample(cands, 200)
    alone = sorted(sample, key=lambda f: -ft([f]))[:25]
pool = list(dict.fromkeys(alone + random.sample(cands, min(25, len(cands)))))
picked, base = [], ft(seeds)
print(f"{t}: {len(cands)} candidates, seeds reach ft={base}", file=sys.stderr)
for _ in range(n):
    best = max(pool, key=lambda f: ft(seeds + picked + [f]))
    gain = ft(seeds + picked + [best])
    if gain <= base: break
    picked.append(best); pool.remove(best)
    print(f"  + {os.path.getsize(best)} bytes, ft {base} -> {gain}", file=sys.stderr)
    base = gain
for f in picked:
    name = "fuzzed-" + hashlib.sha1(open(f, "rb").read()).hexdigest()[:12]
    shutil.copy(f, os.path.join(committed, name))
shutil.rmtree(tmp)
