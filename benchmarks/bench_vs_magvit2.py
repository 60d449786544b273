"""Our video tokenizer (a preset's shape: `--preset`, default the shipped `tokenizer/cpu`) against
magvit2-pytorch's VideoTokenizer at equal width, compression and K: encode + decode frames/s and a
training step, two 17x64x64 clips.

Both sides: base width 32 (max 64), 4x space in two steps and the preset's time compression (2x
for tokenizer/cpu in one step, 4x for tokenizer/cpu_t4 in two), one residual block per level, LFQ with 2^18 codes; ours has 18 bits in 2 x 2^9 entropy groups, magvit2-pytorch one
codebook; no GAN and no perceptual loss on either side. magvit2-pytorch runs in the peer venv
(../shared/peers/setup.sh), each side in its own process, rounds interleaved; the ratio of
each round is taken within that round.

    . ../shared/peers/setup.sh && .venv/bin/python benchmarks/bench_vs_magvit2.py --peer-python $PEER_PY --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

OURS = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1])); torch.manual_seed(0)
from videopoet.config import from_dict, load_yaml
from videopoet.tokenizers.video import VideoTokenizer, VideoTokenizerConfig
tok = VideoTokenizer(from_dict(VideoTokenizerConfig, load_yaml(sys.argv[2])["model"]))
x = torch.rand(2, 3, 17, 64, 64) * 2 - 1
with torch.no_grad():
    tok.decode(tok.encode(x))
    t = time.perf_counter(); r = 3
    for _ in range(r):
        tok.decode(tok.encode(x))
    enc = 2 * 17 * r / (time.perf_counter() - t)
opt = torch.optim.Adam(tok.parameters(), 1e-4)
def step():
    out = tok(x)
    loss = (out.reconstruction - x).abs().mean() + 0.01 * (out.per_sample_entropy - out.batch_entropy) + 0.25 * out.commitment
    loss.backward(); opt.step(); opt.zero_grad()
step(); t = time.perf_counter()
for _ in range(2):
    step()
print(json.dumps({"params": sum(p.numel() for p in tok.parameters()), "frames_per_s": enc, "train_step_s": (time.perf_counter() - t) / 2}))
"""

PEER = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1])); torch.manual_seed(0)
from magvit2_pytorch import VideoTokenizer
tok = VideoTokenizer(image_size=64, init_dim=32, max_dim=64, codebook_size=2 ** 18, num_codebooks=1,
    layers=("residual", "compress_space", "compress_time", "residual", "compress_space")
    + (("compress_time",) if int(sys.argv[2]) == 4 else ()) + ("residual",),
    use_gan=False, perceptual_loss_weight=0.0, flash_attn=False, separate_first_frame_encoding=True)
x = torch.rand(2, 3, 17, 64, 64) * 2 - 1
with torch.no_grad():
    tok.decode_from_code_indices(tok.tokenize(x))
    t = time.perf_counter(); r = 3
    for _ in range(r):
        tok.decode_from_code_indices(tok.tokenize(x))
    enc = 2 * 17 * r / (time.perf_counter() - t)
opt = torch.optim.Adam(tok.parameters(), 1e-4)
def step():
    loss = tok(x, return_loss=True)
    loss = loss[0] if isinstance(loss, tuple) else loss
    loss.backward(); opt.step(); opt.zero_grad()
step(); t = time.perf_counter()
for _ in range(2):
    step()
print(json.dumps({"params": sum(p.numel() for p in tok.parameters()), "frames_per_s": enc, "train_step_s": (time.perf_counter() - t) / 2}))
"""


def run(python: str, code: str, threads: int, env: dict, arg: str) -> dict:
    r = subprocess.run([python, "-c", code, str(threads), arg], capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-python", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--preset", default="tokenizer/cpu", help="our model's preset (tokenizer/cpu: 2x time; tokenizer/cpu_t4: 4x)")
    a = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    env_ours = {**os.environ, "PYTHONPATH": str(root)}
    env_peer = {**os.environ}
    stubs = root.parent / "shared" / "peers" / "stubs"
    env_peer["PYTHONPATH"] = str(stubs) + (os.pathsep + os.environ["PYTHONPATH"] if "PYTHONPATH" in os.environ else "")
    sys.path.insert(0, str(root))
    from videopoet.config import load_yaml

    tc = int(load_yaml(a.preset)["model"]["temporal_compression"])
    if tc not in (2, 4):
        raise SystemExit(f"--preset {a.preset}: temporal_compression {tc}; this benchmark builds the peer at 2x or 4x")
    rows = []
    for k in range(a.rounds):
        ours = run(sys.executable, OURS, a.threads, env_ours, a.preset)
        peer = run(a.peer_python, PEER, a.threads, env_peer, str(tc))
        row = {"round": k, "ours": ours, "magvit2_pytorch": peer,
               "encode_decode_ratio": ours["frames_per_s"] / peer["frames_per_s"],
               "train_step_ratio": peer["train_step_s"] / ours["train_step_s"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "a") as f:
            for row in rows:
                f.write(json.dumps({"threads": a.threads, "preset": a.preset, **row}) + "\n")


if __name__ == "__main__":
    main()
