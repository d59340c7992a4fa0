"""Variable-length attention for padding-free (packed) batches, so packed rows never attend to each other.

A padding-free batch is one row of several sequences laid end to end; its `position_ids` restart at each
sequence's start. transformers only isolates them under flash-attention kernels (`flash_attention_2` has
no wheel for torch 2.11 + CUDA 13), and under sdpa/eager only while no KV cache object exists, which the
model creates whenever `use_cache` is on. Two ways in:

- transformers backend: `register()` adds `VARLEN` (`train.attn_implementation: genz_varlen`, the default
  for padding-free batches) to transformers' AttentionInterface and AttentionMaskInterface. Packed calls
  run torch's `varlen_attn` (flash) on CUDA, else one SDPA call per sequence (the reference the tests
  hold the kernel to); every other call (padded batches, generation) is plain sdpa.
- Unsloth: its own packed path already runs torch's varlen kernel, but only when `varlen_attn` takes
  `enable_gqa` (torch >= 2.12); `allow_unsloth_torch_varlen()` gives torch 2.11's function that keyword.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from genz_speak.errors import ParamError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

VARLEN = "genz_varlen"  # the attn_implementation name (no "flash" in it: transformers treats those apart)
TORCH_VARLEN = "torch varlen_attn"
SDPA_SEGMENTS = "sdpa per sequence"
SDPA = "sdpa"
# Calls per kernel since the process started (padded and generation calls count as sdpa): the train
# metrics and the benchmark report which kernel really ran.
kernel_calls: Counter[str] = Counter()


def register() -> None:
    """Make `VARLEN` a valid `attn_implementation` (idempotent; before `from_pretrained`)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, varlen_mask)


def isolates_rows(attn_implementation: str | None) -> bool:
    """Whether this transformers attention keeps the sequences of a padding-free batch apart."""
    return attn_implementation == VARLEN or "flash" in str(attn_implementation)


@dataclass(frozen=True)
class Segments:
    """The sequences of a flattened batch: cumulative starts (int32, on the tensors' device) and lengths."""

    cu_seqlens: torch.Tensor
    lengths: tuple[int, ...]

    @property
    def max_len(self) -> int:
        return max(self.lengths)


def segments_from_position_ids(position_ids: torch.Tensor, batch: int, length: int) -> Segments | None:
    """Where the sequences of `batch` rows of `length` tokens start: at each row's start and wherever the
    position does not continue the previous one (+1), the rule transformers' masks use. None when every
    row holds one sequence."""
    import torch

    pos = position_ids.expand(batch, length)
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    begin = starts.reshape(-1).nonzero().flatten()
    if begin.numel() == batch:
        return None
    end = torch.tensor([batch * length], device=begin.device)
    cu = torch.cat([begin, end]).to(torch.int32)
    return Segments(cu, tuple(cu.diff().tolist()))


# The last batch's segments, keyed by the tensor they were read from: every layer of one forward gets the
# same tensor, so the device-to-host copy that reading boundaries needs happens once per forward.
_memo: dict[str, tuple[torch.Tensor, tuple[int, int, int], Segments | None]] = {}


def _segments(batch: int, length: int, kwargs: dict[str, Any]) -> Segments | None:
    """The batch's sequences, from `cu_seq_lens_q` (TRL >= 1.16's collator sends it) or `position_ids`."""
    cu, position_ids = kwargs.get("cu_seq_lens_q"), kwargs.get("position_ids")
    if cu is not None and batch == 1:
        found = _memoized("cu_seq_lens_q", cu, batch, length, _from_cu_seqlens)
        if found is not None:
            return found
    if position_ids is None or position_ids.shape[-1] != length:
        return None
    return _memoized("position_ids", position_ids, batch, length, segments_from_position_ids)


def _memoized(name: str, source: torch.Tensor, batch: int, length: int, read: Any) -> Segments | None:
    key = (source._version, batch, length)
    held = _memo.get(name)
    if held is None or held[0] is not source or held[1] != key:
        held = _memo[name] = (source, key, read(source, batch, length))
    return held[2]


def _from_cu_seqlens(cu: torch.Tensor, batch: int, length: int) -> Segments | None:
    import torch

    lengths = tuple(cu.diff().tolist())
    return Segments(cu.to(torch.int32), lengths) if sum(lengths) == length and len(lengths) > 1 else None


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: query (B, H, T, D), key/value (B, H_kv, S, D) -> (B, T, H, D).

    Sequences packed into a row (from `cu_seq_lens_q` or `position_ids`) attend only within themselves;
    anything else (a padding mask from `varlen_mask`, a KV cache, one sequence per row) goes to sdpa.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    for unsupported in ("sliding_window", "softcap", "s_aux"):
        # varlen_mask drops the masks these need, so no path here could honour them.
        if kwargs.get(unsupported) is not None:
            raise ParamError(
                "train.attn_implementation",
                f"{VARLEN} does not support {unsupported}, which "
                "this model's attention uses; pick flash_attention_2 or the unsloth backend",
            )
    batch, _, length, _ = query.shape
    segments = None
    if attention_mask is None and length == key.shape[2] and length > 1:
        segments = _segments(batch, length, kwargs)
    if segments is None:
        kernel_calls[SDPA] += 1
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    half = _half_dtype(query, module)
    kernel = choose_kernel(query.device, query.shape[-1], half, dropout)
    kernel_calls[kernel] += 1
    if kernel == TORCH_VARLEN and half is not None:
        out = _torch_varlen(query, key, value, segments, scaling, causal, half)
    else:
        out = _sdpa_segments(query, key, value, segments, scaling, causal, dropout)
    return out.view(batch, length, *out.shape[-2:]), None


def varlen_mask(
    *, q_length: int, kv_length: int, attention_mask: torch.Tensor | None = None, **kwargs: Any
) -> torch.Tensor | None:
    """transformers mask function for `VARLEN` (called with keywords only): None where the attention
    function needs no mask (no padding, and the queries span the keys or are one token: padding-free
    batches, a plain causal forward, one decoding step), else sdpa's 4D mask (padding, generation)."""
    from transformers.masking_utils import sdpa_mask

    padded = attention_mask is not None and not (
        attention_mask.shape[-1] == kv_length and attention_mask.all()
    )
    if not padded and q_length in (1, kv_length):
        return None
    return sdpa_mask(q_length=q_length, kv_length=kv_length, attention_mask=attention_mask, **kwargs)


def _half_dtype(query: torch.Tensor, module: torch.nn.Module) -> torch.dtype | None:
    """The 16-bit dtype the varlen kernel can take: the query's own, else autocast's, else the model's
    (k-bit preparation leaves norms, hence q/k/v, in float32). None: stay in float32."""
    import torch

    halves = (torch.float16, torch.bfloat16)
    if query.dtype in halves:
        return query.dtype
    device = query.device.type
    if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) in halves:
        return torch.get_autocast_dtype(device)
    dtype = getattr(getattr(module, "config", None), "dtype", None)
    return dtype if dtype in halves else None


def _varlen_attn() -> Any:
    """torch's varlen_attn when it exists with causal windows (torch >= 2.11), else None. Looked up per
    call: Unsloth's wrapper (below) may replace it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn if "window_size" in _parameters(varlen_attn) else None


@functools.cache
def _parameters(fn: Any) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)


@functools.cache
def choose_kernel(device: torch.device, head_dim: int, half: torch.dtype | None, dropout: float) -> str:
    """TORCH_VARLEN where torch's varlen flash kernel takes these inputs, else SDPA_SEGMENTS (logged once)."""
    import torch

    reason = None
    if device.type != "cuda":
        reason = f"no CUDA ({device.type})"
    elif _varlen_attn() is None:
        reason = f"torch {torch.__version__} has no varlen_attn with window_size"
    elif not torch.backends.cuda.is_flash_attention_available():
        reason = "this torch build has no flash attention"
    elif torch.cuda.get_device_capability(device) < (8, 0):
        reason = "flash attention needs compute capability 8.0+"
    elif half is None:
        reason = "the model computes in float32 (varlen_attn takes fp16/bf16 only)"
    elif head_dim % 8 or head_dim > 256:
        reason = f"head_dim {head_dim} (flash takes multiples of 8 up to 256)"
    elif dropout:
        reason = "attention dropout (varlen_attn has none)"
    kernel = SDPA_SEGMENTS if reason else TORCH_VARLEN
    log.info("packed rows: attention kernel %s%s", kernel, f" ({reason})" if reason else f" in {half}")
    return kernel


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B*T, H, D), the layout varlen kernels take."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])


def _expand_kv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Grouped-query K/V (T, H_kv, D) repeated to the query's H heads: head h reads K/V head h // groups,
    as transformers' repeat_kv does."""
    groups = query.shape[1] // key.shape[1]
    return key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)


def _torch_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: Segments,
    scale: float | None,
    causal: bool,
    half: torch.dtype,
) -> torch.Tensor:
    varlen_attn = _varlen_attn()
    q, k, v = (_flat(x).to(half) for x in (query, key, value))
    gqa: dict[str, bool] = {}
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in _parameters(varlen_attn):
            gqa["enable_gqa"] = True
        else:  # torch 2.11: no enable_gqa keyword
            k, v = _expand_kv(q, k, v)
    cu, longest = segments.cu_seqlens.to(q.device), segments.max_len
    out = varlen_attn(
        q, k, v, cu, cu, longest, longest, scale=scale, window_size=(-1, 0) if causal else (-1, -1), **gqa
    )
    return out.to(query.dtype)


def _sdpa_segments(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: Segments,
    scale: float | None,
    causal: bool,
    dropout: float,
) -> torch.Tensor:
    """One SDPA call per sequence: the fallback kernel, and the reference the varlen kernel is held to."""
    import torch
    import torch.nn.functional as F

    q, k, v = (_flat(x) for x in (query, key, value))
    if q.shape[1] != k.shape[1]:
        k, v = _expand_kv(q, k, v)
    q, k, v = (x.transpose(0, 1) for x in (q, k, v))  # (H, B*T, D): heads as SDPA's batch
    outs, start = [], 0
    for n in segments.lengths:
        end = start + n
        window = (slice(None), slice(start, end))
        outs.append(
            F.scaled_dot_product_attention(
                q[window], k[window], v[window], dropout_p=dropout, is_causal=causal, scale=scale
            )
        )
        start = end
    return torch.cat(outs, dim=1).transpose(0, 1)  # (B*T, H, D)


# ----------------------------------------------------------------------------------------------- Unsloth
# Unsloth 2026.10.9 (unsloth/utils/attention_dispatch.py) reads torch.nn.attention.varlen.varlen_attn once,
# when that module is imported (`_load_torch_varlen_attn`), and keeps it only if its signature has both
# `window_size` and `enable_gqa`; otherwise packed rows run one SDPA call per sequence (2.5x slower on an
# H100). torch 2.11 has window_size but not enable_gqa. The wrapper below adds the keyword (repeating K/V
# heads, which is what enable_gqa means). What breaks if Unsloth changes:
# - it reads the kernel elsewhere or tests something else (a torch version, a renamed module): the wrapper
#   goes unused and packed rows stay on per-sequence SDPA (still isolated, slower); `unsloth_packed_kernel`
#   logs a warning, and metrics/train.json's attention_kernel says so;
# - it passes varlen_attn a keyword the wrapper lacks: TypeError at the first packed step;
# - its "lean" path (UNSLOTH_LEAN_VARLEN, on by default) calls torch's aten flash ops directly with the
#   grouped K/V, which the flash kernel takes natively; the wrapper then only serves the signature check
#   and calls Unsloth routes through torch.compile.
# A torch whose varlen_attn already takes enable_gqa (2.12+) is left alone.


def allow_unsloth_torch_varlen() -> None:
    """Give torch 2.11's varlen_attn an `enable_gqa` keyword before Unsloth is imported (see above)."""
    varlen = _varlen_attn()
    if varlen is None:
        log.info("unsloth: torch has no varlen_attn with window_size; packed rows run SDPA per sequence")
        return
    if "enable_gqa" in _parameters(varlen):
        return  # torch >= 2.12 (or the wrapper, installed earlier in this process)
    if "unsloth.utils.attention_dispatch" in sys.modules:
        log.warning(
            "unsloth was imported before its varlen_attn could be enabled: packed rows run SDPA per sequence"
        )
        return
    import torch.nn.attention.varlen

    torch.nn.attention.varlen.varlen_attn = _with_enable_gqa(varlen)
    log.info("unsloth: torch varlen_attn given enable_gqa (K/V heads repeated), so packed rows can use it")


def _with_enable_gqa(varlen_attn: Any) -> Any:
    def varlen_attn_gqa(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cu_seq_q: torch.Tensor,
        cu_seq_k: torch.Tensor,
        max_q: int,
        max_k: int,
        *,
        return_aux: Any = None,
        scale: float | None = None,
        window_size: tuple[int, int] = (-1, -1),
        enable_gqa: bool = False,
    ) -> Any:
        if enable_gqa and key.shape[1] != query.shape[1]:
            key, value = _expand_kv(query, key, value)
        return varlen_attn(
            query,
            key,
            value,
            cu_seq_q,
            cu_seq_k,
            max_q,
            max_k,
            return_aux=return_aux,
            scale=scale,
            window_size=window_size,
        )

    return varlen_attn_gqa


def unsloth_packed_kernel() -> str:
    """Which kernel Unsloth's attention dispatch runs packed rows through in this process (after import)."""
    dispatch = sys.modules.get("unsloth.utils.attention_dispatch")
    if dispatch is None:
        return "unknown (unsloth.utils.attention_dispatch not loaded)"
    try:
        backend = dispatch.select_attention_backend(use_varlen=True)
    except (AttributeError, TypeError, ValueError) as err:  # a private API: report it, never fail on it
        return f"unknown ({err!r:.80})"
    if backend != getattr(dispatch, "SDPA", "sdpa"):
        return f"unsloth {backend}"
    if getattr(dispatch, "_TORCH_VARLEN_ATTN", None) is not None:
        lean = getattr(dispatch, "_LEAN_VARLEN", False)
        return "unsloth torch varlen (aten flash)" if lean else f"unsloth {TORCH_VARLEN}"
    return f"unsloth {SDPA_SEGMENTS}"
