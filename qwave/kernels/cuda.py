"""GPU kernels, registered only when CUDA is available (CPU stays the default device).

* int8 activations (int8, and int2..int7 and ternary, whose default recipe is W·A8): the format's recipe with
  ``torch._int_mm`` (int8 x int8 -> int32 on tensor cores) on the unpacked integer codes. Activations are quantized
  per row exactly as the reference does; per-group weights run one ``_int_mm`` per group.
* every weight-only format: the cached float32 copy from ``weight_only`` on the GPU.

Not exercised by the CPU test suite; ``qwave doctor`` self-checks it against the reference on a CUDA machine.
"""

from __future__ import annotations

import torch

from qwave.kernels import Kernel, register_kernel, weight_only

if torch.cuda.is_available():
    from qwave.formats.base import quantize_rows_int8

    def _prepare_int8(fmt, packed: dict[str, torch.Tensor], shape: tuple[int, int]) -> dict:
        q = fmt.unpack(packed, shape)
        group_size = getattr(fmt, "group_size", None)
        size = shape[1] if group_size is None else min(group_size, shape[1])
        groups = q.scale.shape[1]
        codes = torch.nn.functional.pad(q.codes, (0, size * groups - shape[1])).reshape(shape[0], groups, size)
        # _int_mm wants the inner dimension a multiple of 8: zero-pad each group (zeros add nothing).
        pad = -size % 8
        codes = torch.nn.functional.pad(codes, (0, pad))
        return {"codes": codes.permute(1, 2, 0).contiguous(), "scale": q.scale.float(), "size": size, "pad": pad}

    def _run_int8(state: dict, x: torch.Tensor) -> torch.Tensor:
        x_codes, x_zero, x_scale = quantize_rows_int8(x)
        x_codes = x_codes - x_zero  # in [-127, 127]: an int8
        rows = x.shape[0]
        groups, size = state["codes"].shape[0], state["size"]
        xg = torch.nn.functional.pad(x_codes, (0, groups * size - x.shape[1])).reshape(rows, groups, size)
        xg = torch.nn.functional.pad(xg, (0, state["pad"])).to(torch.int8)
        # _int_mm needs more than 16 rows: pad the batch with zero rows and drop them afterwards.
        extra = max(0, 17 - rows)
        y = torch.zeros(rows, state["codes"].shape[2], device=x.device)
        for g in range(groups):
            a = torch.nn.functional.pad(xg[:, g], (0, 0, 0, extra))
            acc = torch._int_mm(a, state["codes"][g])[:rows]
            y = y + acc.float() * state["scale"][:, g]
        return y * x_scale

    register_kernel(
        Kernel(
            name="int8-cuda-int-mm",
            formats=("int8", "int7", "int6", "int5", "int4", "int3", "int2", "ternary"),
            device="cuda",
            prepare=_prepare_int8,
            run=_run_int8,
            cached_bytes=lambda state: int(state["codes"].nbytes + state["scale"].nbytes),
            supports=lambda fmt: fmt.activations == "int8" and fmt.act_recipe == "zero_point",
        )
    )
    register_kernel(weight_only.build("cuda"))
