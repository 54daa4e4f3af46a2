import pytest
import torch
import transformers as tf

from editkit.errors import UnsupportedArchitectureError
from editkit.models.adapters import adapter_for, get_module


def test_sites_exist_with_declared_layout(any_arch):
    lm = any_arch
    ad = lm.adapter
    n = ad.n_layers(lm.model)
    assert n >= 2
    d_model = get_module(lm.model, ad.embeddings).weight.shape[1]
    for layer in range(n):
        w_out = ad.as_out_in(ad.module(lm.model, layer, "mlp_out").weight)
        w_in = ad.as_out_in(ad.module(lm.model, layer, "mlp_in").weight)
        # In the [out, in] view the MLP maps d_model -> d_ff -> d_model whatever the storage layout.
        assert w_in.shape[1] == d_model and w_out.shape[0] == d_model
        assert w_in.shape[0] == w_out.shape[1]
    get_module(lm.model, ad.final_norm)
    get_module(lm.model, ad.head)


def test_declared_layout_matches_the_forward_computation(any_arch):
    """y = W x in the [out, in] view must equal what the projection module computes."""
    lm = any_arch
    mod = lm.adapter.module(lm.model, 0, "mlp_out")
    x = torch.randn(3, lm.adapter.as_out_in(mod.weight).shape[1])
    expected = x @ lm.adapter.as_out_in(mod.weight).T
    bias = getattr(mod, "bias", None)
    if bias is not None:
        expected = expected + bias
    torch.testing.assert_close(mod(x), expected)


def test_a_declared_mlp_output_norm_is_what_the_layer_applies_to_the_mlp_output(any_arch):
    """Where the adapter names a norm between the MLP's output and the residual stream (Gemma), a forward pass
    feeds that norm exactly the output projection's output; elsewhere no layer has a post-MLP norm."""
    lm = any_arch
    ad = lm.adapter
    if not ad.mlp_out_norm:
        names = [n for n, _ in ad.layer_list(lm.model)[0].named_modules()]
        assert not any("post_feedforward" in n for n in names)
        with pytest.raises(UnsupportedArchitectureError, match="no norm between"):
            ad.module(lm.model, 0, "mlp_out_norm")
        return
    got: dict[str, torch.Tensor] = {}
    hooks = [
        ad.module(lm.model, 0, "mlp_out").register_forward_hook(lambda _m, _i, o: got.setdefault("out", o)),
        ad.module(lm.model, 0, "mlp_out_norm").register_forward_hook(lambda _m, i, _o: got.setdefault("in", i[0])),
    ]
    try:
        with torch.no_grad():
            lm.model(input_ids=torch.tensor([[1, 2, 3]]))
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(got["in"], got["out"])


def test_layer_out_of_range_is_clear(llama):
    with pytest.raises(IndexError, match=r"layers 0\.\.3"):
        llama.adapter.check_layer(llama.model, 9)


def test_unsupported_architecture_lists_supported():
    cfg = tf.BertConfig()
    with pytest.raises(UnsupportedArchitectureError, match="LlamaConfig"):
        adapter_for(cfg)
