import pytest
import torch

import attention_variants as av
from attention_variants.full import softmax_attention
from attention_variants.flash import BackendUnavailableError


def _inputs(n=40):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8) for _ in range(3))
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[0, 25:] = False
    return q, k, v, mask


@pytest.mark.parametrize("backend", ["auto", "math", "flash"])
@pytest.mark.parametrize("masked", [False, True])
def test_full_and_flash_agree(backend, masked):
    q, k, v, mask = _inputs()
    mask = mask if masked else None
    full = av.build("full", heads=3, head_dim=8)
    flash = av.build("flash", heads=3, head_dim=8, backend=backend)
    torch.testing.assert_close(flash(q, k, v, mask), full(q, k, v, mask), atol=1e-5, rtol=1e-5)
    assert flash.last_backend in ("flash", "math")


def test_full_matches_definition():
    q, k, v, mask = _inputs()
    scores = q @ k.transpose(-1, -2) / 8 ** 0.5
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    torch.testing.assert_close(av.build("full")(q, k, v, mask), scores.softmax(-1) @ v)


def test_padded_key_changes_no_real_query():
    q, k, v, mask = _inputs()
    out = softmax_attention(q, k, v, mask)
    k[0, :, 30] += 100.0
    v[0, :, 30] -= 100.0
    torch.testing.assert_close(softmax_attention(q, k, v, mask), out)


def test_unknown_variant_lists_available():
    with pytest.raises(av.UnknownVariantError) as err:
        av.build("perfromer")
    msg = str(err.value)
    assert "'perfromer'" in msg and "full" in msg and "flash" in msg and "performer" in msg


def test_unknown_knob_and_backend():
    with pytest.raises(TypeError, match="num_features"):
        av.build("full", num_features=3)
    with pytest.raises(ValueError, match="cudnn"):
        av.build("flash", backend="nope")


def test_unavailable_backend_is_a_clear_error():
    q, k, v, _ = _inputs()
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(BackendUnavailableError, match="backend=auto"):
        av.build("flash", backend="cudnn")(q, k, v)
    with pytest.raises(BackendUnavailableError, match="xformers"):
        av.build("flash", backend="xformers")(q, k, v)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "cudnn", "flash", "efficient", "math"])
def test_flash_backends_agree_on_gpu(backend):
    q, k, v, mask = (t.cuda() for t in _inputs(256))
    q, k, v = (t.half() for t in (q, k, v))
    ref = softmax_attention(q.float(), k.float(), v.float(), mask)
    for m in (None, mask):
        attn = av.build("flash", heads=3, head_dim=8, backend=backend)
        try:
            out = attn(q, k, v, m)
        except BackendUnavailableError as err:
            pytest.skip(str(err))
        expected = ref if m is not None else softmax_attention(q.float(), k.float(), v.float())
        torch.testing.assert_close(out.float(), expected, atol=2e-3, rtol=2e-3)
