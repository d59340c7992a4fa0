"""llama.cpp's own HF -> GGUF converter (`convert_hf_to_gguf.py`), run offline with no C++ build.

The converter ships inside llama-cpp-python's source distribution, the very tree its wheel is built from:
`scripts/setup.sh` downloads the sdist of the version `requirements/cpu.lock` pins and `install` copies out
the script, its `conversion/` package (a module per architecture family) and the gguf-py of that tree into
the venv (`CONVERTER_DIR`). PyPI's gguf carries the same version number but lags what the converter uses,
so the converter runs in a subprocess with its own gguf-py first on `sys.path`; the venv's gguf, which
genz-speak reads GGUF files with, stays as it is.

    python -m genz_speak.export.converter install SDIST   # what setup.sh runs
    python -m genz_speak.export.converter version         # the installed converter's version, or exit 1
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from genz_speak.errors import InputError, ParamError, StageFailed

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CONVERTER_DIR = Path(sys.prefix) / "share" / "genz-speak" / "llama.cpp-convert"
# What convert_hf_to_gguf.py needs from the sdist's vendor/llama.cpp/.
MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "gguf-py/pyproject.toml", "LICENSE")
_SETUP_HINT = "run `bash scripts/setup.sh` (it installs llama.cpp's converter into the venv)"


def install(sdist: Path, dest: Path = CONVERTER_DIR) -> dict[str, str]:
    """Copy the converter out of a llama-cpp-python sdist into `dest` (replacing what was there); its
    VERSION record: the sdist's version and the vendored llama.cpp commit."""
    match = re.match(r"llama_cpp_python-(.+)\.tar\.gz$", sdist.name)
    if match is None:
        raise InputError(f"{sdist}: not a llama_cpp_python-VERSION.tar.gz sdist")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    commit = ""
    with tarfile.open(sdist) as tar:
        for member in tar:
            parts = member.name.split("/", 1)
            rel = parts[1] if len(parts) == 2 else ""
            if rel == ".git/modules/vendor/llama.cpp/HEAD" and member.isfile():
                commit = tar.extractfile(member).read().decode().strip()  # type: ignore[union-attr]
            rel = rel.removeprefix("vendor/llama.cpp/") if rel.startswith("vendor/llama.cpp/") else ""
            if not member.isfile() or not any(
                rel == m or (m.endswith("/") and rel.startswith(m)) for m in MEMBERS
            ):
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, target.open("wb") as out:  # type: ignore[union-attr]
                shutil.copyfileobj(src, out)
    if not (tmp / "convert_hf_to_gguf.py").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{sdist}: no vendor/llama.cpp/convert_hf_to_gguf.py in it")
    record = {"llama_cpp_python": match.group(1), "llama_cpp_commit": commit}
    (tmp / "VERSION").write_text(json.dumps(record) + "\n", encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return record


def version(dest: Path = CONVERTER_DIR) -> dict[str, str] | None:
    """The installed converter's VERSION record; None when there is none."""
    path = dest / "VERSION"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def stage(
    model_dir: Path, staging: Path, tokenizer: PreTrainedTokenizerBase, chat_template: str, license: str
) -> Path:
    """`staging`: links to `model_dir`'s files, plus what a folder saved by transformers 5 lacks and the
    converter reads:

    * `added_tokens_decoder` in tokenizer_config.json: transformers 5 keeps added tokens in
      tokenizer.json only, and the converter's SentencePiece path takes a token's type (CONTROL) from this
      key alone: without it Gemma's turn markers become NORMAL pieces llama.cpp never matches whole, and
      chatml's new tokens unused placeholders;
    * `chat_template` as chat_template.jinja: the template the GGUF carries (thinking switched off, see
      `gguf_chat_template`);
    * a README.md whose YAML header gives the licence: the converter reads general.license from a model
      card and has no flag for it.
    """
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    replaced = {"tokenizer_config.json", "chat_template.jinja", "README.md"}
    for f in model_dir.iterdir():
        if f.is_file() and f.name not in replaced:
            (staging / f.name).symlink_to(f.resolve())
    config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)  # the .jinja file is the one template
    config.setdefault(
        "added_tokens_decoder",
        {
            str(i): {
                "content": t.content,
                "lstrip": t.lstrip,
                "normalized": t.normalized,
                "rstrip": t.rstrip,
                "single_word": t.single_word,
                "special": t.special,
            }
            for i, t in sorted(tokenizer.added_tokens_decoder.items())
        },
    )
    text = json.dumps(config, indent=2, ensure_ascii=False)
    (staging / "tokenizer_config.json").write_text(text, encoding="utf-8")
    (staging / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    (staging / "README.md").write_text(f"---\nlicense: {json.dumps(license)}\n---\n", encoding="utf-8")
    return staging


# A GGUF is served by llama.cpp, Ollama or LM Studio, which render its template with no extra arguments:
# where the template has a thinking switch (Qwen3), it is set off in the template itself.
_THINKING_OFF = "{%- set enable_thinking = false %}\n"


def gguf_chat_template(template: str) -> str:
    """The chat template a GGUF carries: the model's own, with thinking off where it can be switched."""
    return _THINKING_OFF + template if "enable_thinking" in template else template


@dataclass(frozen=True)
class Converted:
    files: dict[str, Path]  # format -> GGUF file
    tokenizer_pre: str | None  # tokenizer.ggml.pre of a BPE vocabulary; None: a SentencePiece one
    pre_source: str | None  # "recognised" (the converter's own table) or "export.tokenizer_pre"
    converter: dict[str, str]  # the converter's VERSION record


def convert(
    model_dir: Path, files: dict[str, Path], *, name: str, tokenizer_pre: str | None, timeout: float = 3600
) -> Converted:
    """Convert a staged model folder (`stage`) into one GGUF file per format (f16, q8_0), in one
    subprocess. `tokenizer_pre` names llama.cpp's pre-tokenizer only when the converter does not
    recognise the tokenizer by its hash. A model llama.cpp cannot take, or a pre-tokenizer nobody named,
    is bad input (one line); any other converter failure fails the stage with the converter's last lines."""
    record = version()
    if record is None:
        raise InputError(f"{CONVERTER_DIR}: llama.cpp's converter is not installed; {_SETUP_HINT}")
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # that would pick PyPI's gguf
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", "1")
    jobs = json.dumps({fmt: str(path) for fmt, path in files.items()})
    cmd = [sys.executable, "-m", __name__, "_run", str(CONVERTER_DIR), str(model_dir), jobs, name]
    if tokenizer_pre:
        cmd.append(tokenizer_pre)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    unsupported = re.search(r"Model (\S+) is not supported", log)
    if unsupported:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
        raise InputError(
            f"export: model_type {model_type!r} ({unsupported.group(1)}) is not one llama.cpp's converter "
            f"{record['llama_cpp_python']} takes; set export.formats: [] to write the model card alone"
        )
    pre = re.search(r"^GGUF_PRE (\S+) (\S+) (\S+)$", log, re.M)
    if pre and pre.group(3) == "unrecognised":
        raise ParamError(
            "export.tokenizer_pre",
            "llama.cpp's converter does not recognise this tokenizer's "
            f"pre-tokenizer (hash {pre.group(2)}); name the llama.cpp pre-tokenizer it uses (llama-bpe, "
            "qwen2, smollm, gpt-2, ...)",
        )
    missing = [fmt for fmt, path in files.items() if not path.is_file()]
    if proc.returncode != 0 or missing:
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise StageFailed(
            f"llama.cpp's convert_hf_to_gguf.py failed on {model_dir} ({proc.returncode}):\n{tail}"
        )
    return Converted(
        files,
        None if pre is None else pre.group(1),
        None if pre is None else {"recognised": "recognised", "forced": "export.tokenizer_pre"}[pre.group(3)],
        record,
    )


def _run(argv: list[str]) -> None:
    """The subprocess: the converter's gguf-py and `conversion` first on sys.path, its pre-tokenizer
    lookup wrapped (a recognised hash keeps the converter's name; an unrecognised one takes the name
    given, else fails), then its main() once per format. Prints `GGUF_PRE name hash how` for the parent."""
    import ast
    import hashlib
    import inspect
    import runpy

    converter, model_dir, jobs, name, *fallback = argv
    sys.path[:0] = [converter, str(Path(converter) / "gguf-py")]
    from conversion.base import TextModel  # type: ignore[import-not-found]  # the converter's own

    original = TextModel.get_vocab_base_pre
    # The probe text the converter hashes the tokenizer's ids of: read from its own source, not copied.
    source = inspect.getsource(original)
    chktxt = ast.literal_eval(source.split("chktxt = ", 1)[1].split("\n", 1)[0])
    said: set[str] = set()

    def vocab_base_pre(self: object, tokenizer: object) -> str:
        chkhsh = hashlib.sha256(str(tokenizer.encode(chktxt)).encode()).hexdigest()  # type: ignore[attr-defined]
        try:
            found, how = original(self, tokenizer), "recognised"
        except NotImplementedError:
            if not fallback:
                print(f"GGUF_PRE - {chkhsh} unrecognised", flush=True)
                raise
            found, how = fallback[0], "forced"
        if chkhsh not in said:
            print(f"GGUF_PRE {found} {chkhsh} {how}", flush=True)
            said.add(chkhsh)
        return found

    TextModel.get_vocab_base_pre = vocab_base_pre
    script = runpy.run_path(str(Path(converter) / "convert_hf_to_gguf.py"), run_name="convert_hf_to_gguf")
    for fmt, out in json.loads(jobs).items():
        sys.argv = [
            "convert_hf_to_gguf.py",
            model_dir,
            "--outfile",
            out,
            "--outtype",
            fmt,
            "--model-name",
            name,
        ]
        script["main"]()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["_run"]:
        _run(args[1:])
    elif args[:1] == ["install"] and len(args) == 2:
        print(json.dumps(install(Path(args[1]))))
    elif args == ["version"]:
        record = version()
        print(json.dumps(record) if record else f"not installed in {CONVERTER_DIR}")
        sys.exit(0 if record else 1)
    else:
        sys.exit(f"usage: python -m {__name__} install SDIST | version")


if __name__ == "__main__":
    main()
