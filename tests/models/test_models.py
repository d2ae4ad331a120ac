"""The model zoo: published parameter counts, the textbook's shape tables, backends, modes, errors.

Shape-only checks use ``jax.eval_shape`` (nothing compiled); only small models run.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import gradcheck, models, ops
from tests.ops.helpers import assert_close

# name -> (num_classes, parameters, source). Sources: torchvision's model docs
# ("num_params"), the papers, or derived by hand from the layer table (shown).
PUBLISHED = {
    "lenet5": (10, 61_706, "LeCun 1998 on 32x32x1: 156 + 2,416 + 48,120 + 10,164 + 850"),
    "alexnet": (1000, 62_378_344, "Krizhevsky 2012, one tower: 34,944 + 614,656 + 885,120 + 1,327,488 + 884,992"
                                  " + 37,752,832 + 16,781,312 + 4,097,000"),
    "zfnet": (1000, 62_357_608, "Zeiler & Fergus 2013: AlexNet with conv1 7x7x3x96 (14,208) instead of 34,944"),
    "vgg11": (1000, 132_863_336, "torchvision"),
    "vgg11_bn": (1000, 132_868_840, "torchvision"),
    "vgg13": (1000, 133_047_848, "torchvision"),
    "vgg13_bn": (1000, 133_053_736, "torchvision"),
    "vgg16": (1000, 138_357_544, "torchvision"),
    "vgg16_bn": (1000, 138_365_992, "torchvision"),
    "vgg19": (1000, 143_667_240, "torchvision"),
    "vgg19_bn": (1000, 143_678_248, "torchvision"),
    "nin": (1000, 7_439_608, "d2l's NiN: blocks 53,568 + 746,240 + 1,180,800 + 5,459,000"),
    "googlenet": (1000, 6_624_904, "torchvision (aux classifiers off)"),
    "resnet18": (1000, 11_689_512, "torchvision"),
    "resnet34": (1000, 21_797_672, "torchvision"),
    "resnet50": (1000, 25_557_032, "torchvision"),
    "resnet101": (1000, 44_549_160, "torchvision"),
    "resnet152": (1000, 60_192_808, "torchvision"),
    "resnet20": (10, 269_722, "He et al. 2015 table 6 (0.27M): 464 stem + 14,016 + 51,072 + 203,520 + 650 fc"),
    "resnet32": (10, 464_154, "He et al. 2015 table 6 (0.46M)"),
    "resnet44": (10, 658_586, "He et al. 2015 table 6 (0.66M)"),
    "resnet56": (10, 853_018, "He et al. 2015 table 6 (0.85M)"),
    "resnet110": (10, 1_727_962, "He et al. 2015 table 6 (1.7M)"),
    "densenet121": (1000, 7_978_856, "torchvision"),
    "densenet169": (1000, 14_149_480, "torchvision"),
    "densenet201": (1000, 20_013_928, "torchvision"),
    "densenet_bc_100_12": (10, 769_162, "Huang et al. 2016 table 2 (0.8M)"),
    "mnist_cnn": (10, 12_042, "208 + 3,216 + 8,224 + 64 (BN) + 330"),
    "shapes_cnn": (5, 14_245, "80 + 1,168 + 12,832 + 165"),
    "colors_cnn": (6, 3_113, "8 + 57 + 3,048"),
    "shapes_colors_cnn": (9, 56_937, "448 + 4,640 + 51,264 + 585"),
    "fashion_cnn": (10, 693_962, "320 + 692,352 + 1,290"),
    "cifar_cnn": (10, 1_250_858, "Keras's cifar10_cnn example, model.summary()"),
    "econ_cnn": (1, 436_737_825, "convs 481,056 (4 bands) + dense 2,048-16,384-16,384-8,192-1"),
}


def _param_count(model, shape):
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))
    return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(variables["params"]))


def test_every_model_has_a_published_count():
    assert sorted(PUBLISHED) == sorted(models.names())


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_count_matches_published_and_summary(name):
    num_classes, expected, _source = PUBLISHED[name]
    model = models.create(name, num_classes=num_classes)
    assert _param_count(model, models.input_shape(name)) == expected
    rows, _ = models.layer_table(model, models.input_shape(name))
    assert sum(r.params for r in rows) == expected  # every parameter belongs to one summarised layer
    assert models.summary(model, models.input_shape(name)).splitlines()[-1].startswith(f"total params: {expected:,}")


@pytest.mark.parametrize("name", models.names())
def test_logits_shape_and_dtype_in_both_modes(name):
    model = models.create(name, num_classes=7)
    x = jax.ShapeDtypeStruct((2, *models.input_shape(name)), jnp.float32)
    key = jax.random.key(0)
    variables = jax.eval_shape(lambda x_: model.init(key, x_, train=False), x)
    out = jax.eval_shape(lambda v, x_: model.apply(v, x_, train=False), variables, x)
    assert (out.shape, out.dtype) == ((2, 7), jnp.float32)
    train_out, state = jax.eval_shape(
        lambda v, x_: model.apply(v, x_, train=True, rngs={"dropout": key}, mutable=["batch_stats"]), variables, x)
    assert train_out.shape == (2, 7)
    assert ("batch_stats" in state) == ("batch_stats" in variables)


def test_alexnet_lrn_and_vgg_cifar_head_options():
    assert _param_count(models.create("alexnet", num_classes=1000, lrn=True), (227, 227, 3)) == 62_378_344
    # the CIFAR head: VGG-16's 14,714,688 convolution parameters + one 512 x 10 linear layer
    assert _param_count(models.create("vgg16", num_classes=10, head="cifar"), (32, 32, 3)) == 14_719_818


def test_googlenet_aux_classifiers_in_train_mode():
    model = models.create("googlenet", num_classes=1000, aux_logits=True)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    key = jax.random.key(0)
    variables = jax.eval_shape(lambda x_: model.init(key, x_), x)
    # torchvision's GoogLeNet with aux_logits=True: 6,624,904 + 3,188,968 + 3,191,016
    assert sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(variables["params"])) == 13_004_888
    (out, aux), _ = jax.eval_shape(
        lambda v, x_: model.apply(v, x_, train=True, rngs={"dropout": key}, mutable=["batch_stats"]), variables, x)
    assert out.shape == (2, 1000) and [a.shape for a in aux] == [(2, 1000), (2, 1000)]
    assert jax.eval_shape(lambda v, x_: model.apply(v, x_), variables, x).shape == (2, 1000)


def _shapes(name, input_shape, **kw):
    rows, _ = models.layer_table(models.create(name, **kw), input_shape)
    return [r.output_shape for r in rows]


def test_textbook_lenet_shape_table_on_3x32x32():
    # 6x28x28 -> 6x14x14 -> 16x10x10 -> 16x5x5 -> 400 -> 120 -> 84 -> 10 (NHWC order here)
    assert _shapes("lenet5", (32, 32, 3), num_classes=10) == [
        (28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16), (400,), (120,), (84,), (10,)]


def test_textbook_mnist_cnn_and_shapes_cnn_tables():
    assert _shapes("mnist_cnn", (28, 28, 1), num_classes=10) == [
        (24, 24, 8), (12, 12, 8), (8, 8, 16), (4, 4, 16), (256,), (32,), (32,), (10,)]
    assert _shapes("shapes_cnn", (28, 28, 1), num_classes=5) == [
        (26, 26, 8), (13, 13, 8), (11, 11, 16), (5, 5, 16), (400,), (32,), (5,)]


def test_summary_rows_and_totals():
    text = models.summary("lenet5", (32, 32, 1))
    lines = text.splitlines()
    assert lines[0] == "lenet5 on input 32x32x1"
    c1 = next(line for line in lines if line.startswith("C1 "))
    assert c1.split() == ["C1", "Conv", "28x28x6", "156", "235,200"]  # 2 * 28*28*6 * 5*5*1 FLOPs
    assert lines[-1].startswith("total params: 61,706")
    assert "non-trainable state: 64" in models.summary("mnist_cnn", (28, 28, 1))  # BN mean + var


SMALL = [("lenet5", (32, 32, 1)), ("mnist_cnn", (28, 28, 1)), ("colors_cnn", (28, 28, 3)),
         ("resnet20", (16, 16, 3)), ("cifar_cnn", (32, 32, 3))]


@pytest.mark.parametrize("name,shape", SMALL, ids=[s[0] for s in SMALL])
def test_im2col_backend_equals_xla_logits_and_gradients(name, shape):
    _check_backend_equals_xla("im2col", name, shape)


@pytest.mark.parametrize("name,shape", SMALL[:3], ids=[s[0] for s in SMALL[:3]])
def test_auto_backend_equals_xla_logits_and_gradients(name, shape, monkeypatch):
    """With every layer measured (no size floor), whatever formulations win give xla's results."""
    monkeypatch.setattr(ops.autotune, "MIN_MEASURED_MACS", 0)
    monkeypatch.setattr(ops.autotune, "MIN_MEASURED_OUTPUT", 0)
    ops.autotune.clear_plans()
    _check_backend_equals_xla("auto", name, shape)
    assert ops.autotune.plans()["conv"], "no conv layer was planned"
    ops.autotune.clear_plans()


def _check_backend_equals_xla(backend, name, shape):
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    key = jax.random.key(1)
    variables = models.create(name, num_classes=10).init(key, x)
    state = {k: v for k, v in variables.items() if k != "params"}

    def loss_and_grads(backend):
        model = models.create(name, num_classes=10, conv_backend=backend)

        def loss(params, x_):
            out, _ = model.apply({"params": params, **state}, x_, train=True, rngs={"dropout": key},
                                 mutable=["batch_stats"])
            return jnp.sum(jnp.sin(out)), out

        return jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(variables["params"], x)

    (_, out_xla), g_xla = loss_and_grads("xla")
    (_, out_other), g_other = loss_and_grads(backend)
    assert_close(out_other, out_xla, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g_other), jax.tree_util.tree_leaves(g_xla)):
        assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name,shape", [("lenet5", (32, 32, 1)), ("resnet20", (16, 16, 3))])
def test_bfloat16_forward_stays_close_to_float32(name, shape):
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    variables = models.create(name, num_classes=10).init(jax.random.key(0), x)
    out32 = models.create(name, num_classes=10).apply(variables, x)
    bf16 = models.create(name, num_classes=10, dtype=jnp.bfloat16)
    out16 = jax.jit(bf16.apply)(variables, x)
    assert out16.dtype == jnp.float32  # logits are promoted for the loss
    assert jax.tree_util.tree_leaves(variables["params"])[0].dtype == jnp.float32
    assert float(jnp.abs(out16 - out32).max()) <= 0.05 * float(jnp.abs(out32).max())


def test_dropout_only_in_train_mode():
    model = models.create("cifar_cnn", num_classes=10)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    apply = jax.jit(model.apply, static_argnames="train")
    eval1, eval2 = apply(variables, x), apply(variables, x)
    np.testing.assert_array_equal(eval1, eval2)
    train_a = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    train_a2 = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    train_b = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(train_a, train_a2)
    assert not np.allclose(train_a, train_b) and not np.allclose(train_a, eval1)
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, x, train=True)


def test_batchnorm_statistics_update_only_in_train_mode():
    model = models.create("mnist_cnn", num_classes=10)
    x = np.random.default_rng(0).standard_normal((8, 28, 28, 1)).astype(np.float32) + 3.0
    variables = model.init(jax.random.key(0), x)
    _, train_state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    _, eval_state = model.apply(variables, x, train=False, mutable=["batch_stats"])
    stats0 = variables["batch_stats"]["dense1_norm"]
    assert not np.allclose(train_state["batch_stats"]["dense1_norm"]["mean"], stats0["mean"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, eval_state["batch_stats"], variables["batch_stats"])
    # eval normalises with running statistics: an example's logits do not depend on its batch
    assert_close(model.apply(variables, x[:1]), model.apply(variables, x)[:1], rtol=1e-6, atol=1e-6)
    train_one = model.apply(variables, x[:2], train=True, mutable=["batch_stats"])[0]
    assert not np.allclose(train_one[:1], model.apply(variables, x, train=True, mutable=["batch_stats"])[0][:1])


def test_unknown_model_lists_names_and_suggests_closest():
    with pytest.raises(ValueError, match=r"unknown model 'lenet'. Did you mean 'lenet5'\? Known models: lenet5, alexnet"):
        models.create("lenet", num_classes=10)
    with pytest.raises(ValueError, match="unknown model 'transformer'. Known models"):
        models.input_shape("transformer")


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_num_classes_must_be_positive_int(num_classes):
    with pytest.raises(ValueError, match=rf"resnet20: num_classes must be a positive int, got {num_classes!r}"):
        models.create("resnet20", num_classes=num_classes)


def test_bad_inputs_and_options():
    model = models.create("lenet5", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match=r"lenet5: input must be a 4-D NHWC batch \(N, H, W, C\), got shape \(32, 32, 1\)"):
        model.apply(variables, jnp.zeros((32, 32, 1)))
    with pytest.raises(ValueError, match=r"input has 3 channels but the layer's parameters were created for 1"):
        model.apply(variables, jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(TypeError, match=r"lenet5: input must be floating point, got dtype uint8"):
        model.apply(variables, jnp.zeros((1, 32, 32, 1), jnp.uint8))
    with pytest.raises(ValueError, match=r"conv_backend must be one of \('xla', 'im2col', 'auto'\), got 'cudnn'"):
        models.create("lenet5", num_classes=10, conv_backend="cudnn")
    with pytest.raises(TypeError, match=r"lenet5: .*unexpected keyword argument 'depth'"):
        models.create("lenet5", num_classes=10, depth=3)
    with pytest.raises(ValueError, match=r"vgg11: head must be one of \('imagenet', 'cifar'\), got 'tiny'"):
        m = models.create("vgg11", num_classes=10, head="tiny")
        jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


def test_gradcheck_cli_checks_a_model(capsys):
    assert gradcheck.main(["--model", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("lenet5") and "fd im2col" in out and "0 failed" in out


def test_gradcheck_cli_rejects_unknown_model():
    with pytest.raises(SystemExit):
        gradcheck.main(["--model", "lenet7"])
