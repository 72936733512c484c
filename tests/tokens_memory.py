"""What one loaded tokenizer costs: trains a byte-level BPE of each size here (nothing is downloaded), then loads
it as a service does (``load_model_tokenizer``) in a fresh process and reports the resident memory it added and
the time it took. ``python -m tests.tokens_memory [VOCAB ...]`` (default 32000 128000); a few minutes."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.unit.tokens import trained


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def measure(directory: str) -> None:
    """In this process: load the tokenizer of ``directory`` and print what it cost."""
    from libs.tokens import count_chat_prompt, load_model_tokenizer

    held = []  # the first load also pays for the parse's transient memory, which the allocator keeps
    for n in range(3):
        files = trained.files_in(Path(directory))
        before = _rss_bytes()
        started = time.perf_counter()
        model = load_model_tokenizer(files)
        loaded_s = time.perf_counter() - started
        del files
        count_chat_prompt(model, {"messages": [{"role": "user", "content": "warm up"}]})
        held.append(model)
        print(json.dumps({"load": n + 1, "vocab": model.vocab_size, "load_s": round(loaded_s, 3),
                          "rss_added_mb": round((_rss_bytes() - before) / 2**20, 1)}))  # fmt: skip


def main(sizes: list[int]) -> None:
    """Train and measure each vocabulary size."""
    for size in sizes:
        directory = Path(tempfile.mkdtemp(prefix=f"tok{size}-"))
        started = time.perf_counter()
        tokenizer = trained.train_tokenizer(vocab_size=size, lines=max(20_000, size * 2), syllables=True)
        trained.write(directory, trained.files(tokenizer, trained.config()))
        print(f"trained {tokenizer.get_vocab_size()} in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "tests.tokens_memory", "--measure", str(directory)], check=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measure(sys.argv[2])
    else:
        main([int(a) for a in sys.argv[1:]] or [32_000, 128_000])
