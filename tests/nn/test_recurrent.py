"""Packed GRU/LSTM: float packing reproduces torch exactly, int8 matches a brute-force integer GRU step by step,
and a small CTC model trained here decodes its sequences after int8 packing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from qwave import artifact
from qwave.eval.sequence import ctc_greedy_decode, error_rate
from qwave.nn import PackedLinear, pack_model, quantize_model
from qwave.nn.recurrent import PackedRecurrent, RecurrentCTC, pack_recurrent


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
def test_fp32_packing_reproduces_torch_multi_layer_bidirectional(cls):
    torch.manual_seed(0)
    rnn = cls(5, 7, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = torch.randn(3, 6, 5)
    h0 = torch.randn(4, 3, 7)
    hx = (h0, torch.randn(4, 3, 7)) if cls is nn.LSTM else h0
    packed = PackedRecurrent.from_rnn(rnn, "fp32")
    with torch.no_grad():
        ref_out, ref_state = rnn(x, hx)
        out, state = packed(x, hx)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for a, b in zip(state if cls is nn.LSTM else (state,), ref_state if cls is nn.LSTM else (ref_state,), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _int8_matvec(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Brute-force int8 recipe: per-row activation codes less their zero point, weight codes per output row, integer
    dot products."""
    w_scale = (np.abs(w).max(axis=1) / 127).astype(np.float16).astype(np.float64)
    w_codes = np.clip(np.round(w / w_scale[:, None]), -127, 127).astype(np.int64)
    lo, hi = np.minimum(x.min(axis=1), 0), np.maximum(x.max(axis=1), 0)
    x_scale = (hi - lo) / 127  # 128 levels per row with a zero point
    x_codes = np.zeros(x.shape, dtype=np.int64)
    nz = x_scale > 0
    zero = np.round(-lo[nz] / x_scale[nz])[:, None]
    x_codes[nz] = (np.clip(np.round(x[nz] / x_scale[nz, None]) + zero, 0, 127) - zero).astype(np.int64)
    out = np.zeros((x.shape[0], w.shape[0]))
    for i in range(x.shape[0]):
        for o in range(w.shape[0]):
            out[i, o] = int(sum(int(a) * int(b) for a, b in zip(x_codes[i], w_codes[o], strict=True)))
            out[i, o] *= x_scale[i] * w_scale[o]
    return out


def test_int8_gru_matches_brute_force_integer_recurrence():
    torch.manual_seed(1)
    gru = nn.GRU(4, 3).eval()
    x = torch.randn(5, 2, 4)  # [T, B, in]
    packed = PackedRecurrent.from_rnn(gru, "int8")
    with torch.no_grad():
        out, _ = packed(x)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    w_ih, w_hh = gru.weight_ih_l0.detach().double().numpy(), gru.weight_hh_l0.detach().double().numpy()
    b_ih, b_hh = gru.bias_ih_l0.detach().double().numpy(), gru.bias_hh_l0.detach().double().numpy()
    h = np.zeros((2, 3))
    for t in range(5):
        gx = _int8_matvec(x[t].double().numpy(), w_ih) + b_ih
        gh = _int8_matvec(h, w_hh) + b_hh
        r, z = sig(gx[:, :3] + gh[:, :3]), sig(gx[:, 3:6] + gh[:, 3:6])
        n = np.tanh(gx[:, 6:] + r * gh[:, 6:])
        h = (1 - z) * n + z * h
        np.testing.assert_allclose(out[t].numpy(), h, atol=1e-5)
    with torch.no_grad():
        float_out, _ = gru(x)
    assert (out - float_out).abs().max() < 0.05  # int8 stays close to the float GRU, but is not identical
    assert (out - float_out).abs().max() > 0
    assert {m.last_kernel for m in packed.modules() if hasattr(m, "last_kernel")} != {None}


def _ctc_data(n: int, seed: int, frames: int = 12, frame_dim: int = 6, vocab: int = 4):
    """Each token (1..vocab) is 2 or 3 frames of a noisy one-hot pattern, separated by silence frames."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, frames, frame_dim), dtype=np.float32)
    refs = []
    for i in range(n):
        t, seq = 0, []
        while True:
            length = int(rng.integers(2, 4))
            if t + length + 1 > frames:
                break
            token = int(rng.integers(1, vocab + 1))
            X[i, t : t + length, token - 1] = 1.0
            seq.append(token)
            t += length + int(rng.integers(1, 3))
        refs.append(seq)
    X += 0.1 * rng.normal(size=X.shape).astype(np.float32)
    return X.reshape(n, -1), refs


def test_ctc_gru_trained_here_survives_int8_packing_and_artifact_round_trip(tmp_path):
    torch.manual_seed(0)
    X, refs = _ctc_data(96, seed=0)
    model = RecurrentCTC(frame_dim=6, frames=12, num_classes=5, hidden=16)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    ctc = nn.CTCLoss(blank=0)
    targets = torch.cat([torch.tensor(r) for r in refs])
    target_lengths = torch.tensor([len(r) for r in refs])
    input_lengths = torch.full((len(refs),), 12)
    Xt = torch.as_tensor(X)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread avoids oversubscription on a busy machine
    try:
        for _ in range(50):
            log_probs = model(Xt).log_softmax(-1).transpose(0, 1)
            loss = ctc(log_probs, targets, input_lengths, target_lengths)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    X_test, refs_test = _ctc_data(64, seed=1)
    packed = pack_recurrent(pack_model(quantize_model(copy.deepcopy(model), "int8")), "int8")
    assert isinstance(packed.rnn, PackedRecurrent) and isinstance(model.rnn, nn.GRU)
    formats = {m.fmt.name for m in packed.modules() if isinstance(m, PackedLinear)}
    assert formats == {"int8"}
    with torch.no_grad():
        float_logits = model.eval()(torch.as_tensor(X_test)).numpy()
        int8_logits = packed(torch.as_tensor(X_test)).numpy()
    per_float = error_rate(ctc_greedy_decode(float_logits), refs_test)
    per_int8 = error_rate(ctc_greedy_decode(int8_logits), refs_test)
    assert per_float < 0.15, per_float  # the model learned the task
    assert per_int8 <= per_float + 0.05, (per_float, per_int8)
    artifact.save(packed, tmp_path / "ctc", classes=["_", "a", "b", "c", "d"])
    loaded = artifact.load(tmp_path / "ctc")
    assert isinstance(loaded.rnn, PackedRecurrent)
    with torch.no_grad():
        torch.testing.assert_close(loaded(torch.as_tensor(X_test)), torch.as_tensor(int8_logits), rtol=0, atol=0)


def test_pack_recurrent_rejects_unsupported_layers():
    from qwave.errors import FormatError

    with pytest.raises(FormatError, match="RNN"):
        PackedRecurrent.from_rnn(nn.RNN(3, 3))
    with pytest.raises(FormatError, match="proj_size"):
        PackedRecurrent.from_rnn(nn.LSTM(3, 4, proj_size=2))
