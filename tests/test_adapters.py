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


def test_layer_out_of_range_is_clear(llama):
    with pytest.raises(IndexError, match=r"layers 0\.\.3"):
        llama.adapter.check_layer(llama.model, 9)


def test_unsupported_architecture_lists_supported():
    cfg = tf.BertConfig()
    with pytest.raises(UnsupportedArchitectureError, match="LlamaConfig"):
        adapter_for(cfg)
