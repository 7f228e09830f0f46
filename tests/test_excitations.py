"""senet-analyze excitations: gates known by construction, and the command on a miniature ImageNet."""

from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from senet_repro import imagenet
from senet_repro.analysis.excitations import (
    HIGH,
    LOW,
    ExcitationError,
    GateRecorder,
    SELayer,
    collect_excitations,
    resolve_class,
    resolve_classes,
    se_layers,
    select_layers,
    summarize,
)
from senet_repro.analysis.plots import plot_layer, plot_overview
from senet_repro.cli.analyze_excitations import excitations
from senet_repro.models import se_bn_inception, se_resnet50
from senet_repro.models.blocks import SEModule
from senet_repro.transforms import CaffePreprocess
from senet_repro.validate import open_valset, read_image
from senet_repro.validate.fake_imagenet import FakeImageNet, make_fake_imagenet
from tests.cli_assertions import assert_one_line_error

CPU = torch.device("cpu")
PAPER_LAYERS = ["SE_2_3", "SE_3_4", "SE_4_6", "SE_5_1", "SE_5_2", "SE_5_3"]
SMALL = CaffePreprocess(resize=12, crop=8)


class TinyBlock(nn.Module):
    """Just an SE module on its input, so its gates are simple functions of the image."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.se = SEModule(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(x)


class TinySENet(nn.Module):
    """Two stages (2 + 1 SE blocks) on the 3-channel image, then 1000 class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(TinyBlock(3), TinyBlock(3))
        self.layer2 = nn.Sequential(TinyBlock(3))
        self.fc = nn.Linear(3, imagenet.NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer2(self.layer1(x)).mean(dim=(2, 3)))


B1 = torch.tensor([0.25, -1.5, 2.0])  # float32-exact biases
B2 = torch.tensor([-3.0, 0.0, 4.5])
B3 = torch.tensor([1.0, -0.75, -2.5])
SCALE3 = 0.5


@torch.no_grad()
def set_se(se: SEModule, fc1: torch.Tensor, fc2: torch.Tensor, bias: torch.Tensor) -> None:
    """fc1 weight (bias 0), fc2 weight and bias, as 1x1 convolutions."""
    assert se.fc1.bias is not None and se.fc2.bias is not None
    se.fc1.weight.copy_(fc1.view_as(se.fc1.weight))
    se.fc1.bias.zero_()
    se.fc2.weight.copy_(fc2.view_as(se.fc2.weight))
    se.fc2.bias.copy_(bias)


def se_of(stage: nn.Sequential, index: int) -> SEModule:
    block = stage[index]
    assert isinstance(block, TinyBlock)
    return block.se


def known_net() -> TinySENet:
    """Gates by construction, with p the channel means of the block's input:

    layer1.0: sigmoid(relu(p) + B1); layer1.1: sigmoid(B2) (zero weights);
    layer2.0: sigmoid(SCALE3 * relu(p) + B3).
    """
    net = TinySENet().eval()
    eye = torch.eye(3)
    set_se(se_of(net.layer1, 0), eye, eye, B1)
    set_se(se_of(net.layer1, 1), torch.zeros(3, 3), torch.zeros(3, 3), B2)
    set_se(se_of(net.layer2, 0), eye, SCALE3 * eye, B3)
    return net


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def expected_gates(p: np.ndarray) -> dict[str, np.ndarray]:
    """The three layers' gates (float64) for an image whose input channel means are p."""
    g1 = sigmoid(np.maximum(p, 0) + B1.double().numpy())
    g2 = torch.sigmoid(B2).double().numpy()  # constant: the model's own float32 value, exactly
    g3 = sigmoid(SCALE3 * np.maximum(p * g1 * g2, 0) + B3.double().numpy())
    return {"layer1.0.se": g1, "layer1.1.se": g2, "layer2.0.se": g3}


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeImageNet:
    """25 images of 5 classes (limousine, throne, computer mouse, cicada, groom with seed 0)."""
    return make_fake_imagenet(tmp_path_factory.mktemp("imagenet"), num_classes=5, images_per_class=5)


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight SE-ResNet-50 state_dict."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "se_resnet50.pth"
    torch.save(se_resnet50().state_dict(), path)
    return path


def fake_classes(fake: FakeImageNet) -> list[str]:
    """The fake set's wnids in devkit order."""
    return sorted({image.wnid for image in fake.images}, key=imagenet.imagenet_classes().index)


# ----------------------------------------------------------------------------- known gates


def test_recorder_gives_exact_constant_gates_and_analytic_input_dependent_ones() -> None:
    """Interleaved classes across batch boundaries, one image skipped (-1): per class, per layer."""
    net = known_net()
    layers = se_layers(net)
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(-6, 7, (11, 3), generator=generator).float()  # integer channel values
    positions = torch.tensor([0, 2, 1, 0, -1, 2, 2, 1, 0, 0, 1])
    images = values.view(11, 3, 1, 1).expand(11, 3, 5, 4).contiguous()  # constant maps: exact means
    with GateRecorder(net, layers, 3, CPU) as recorder, torch.inference_mode():
        for start in range(0, 11, 3):
            net(images[start : start + 3])
            recorder.add(positions[start : start + 3])
        means = recorder.means()
    assert recorder.counts.tolist() == [4, 3, 3]
    for k in range(3):
        mine = positions == k
        expected = [expected_gates(p) for p in values[mine].double().numpy()]
        for layer in layers:
            want = np.mean([e[layer.path] for e in expected], axis=0)
            if layer.path == "layer1.1.se":
                assert np.array_equal(means[layer.name][k], want)  # bit-exact
            else:
                np.testing.assert_allclose(means[layer.name][k], want, rtol=1e-6, atol=0)
    assert all(not module._forward_hooks for module in net.modules())  # hooks removed


def test_recorder_refuses_a_layer_that_did_not_run_once() -> None:
    net = known_net()
    layers = se_layers(net)
    with GateRecorder(net, layers, 1, CPU) as recorder, torch.inference_mode():
        net.layer1(torch.zeros(1, 3, 2, 2))  # layer2 never runs
        with pytest.raises(RuntimeError, match="layer2.0.se ran 0 times"):
            recorder.add(torch.zeros(1, dtype=torch.int64))


def test_collect_on_images_per_class_per_layer_with_plots(fake: FakeImageNet) -> None:
    """Through the harness's loading: class routing, counts, the output order and the figure objects."""
    net = known_net()
    wnids = fake_classes(fake)
    chosen = resolve_classes([wnids[3], wnids[0], wnids[2]])
    with torch.no_grad():  # every image is predicted as the first chosen class, in the torchvision order
        net.fc.weight.zero_()
        net.fc.bias.zero_()
        net.fc.bias[chosen[0].torchvision_index] = 1.0
    valset = open_valset(fake.layouts["flat"])
    result = collect_excitations(
        net,
        valset,
        chosen,
        select_layers(se_layers(net), "all"),
        preprocess=SMALL,
        per_class=4,
        device=CPU,
        batch_size=3,
        output_order=imagenet.ClassOrder.TORCHVISION,
        progress=False,
    )
    assert result.images == [4, 4, 4]
    assert result.top1_correct == [4, 0, 0]
    assert result.unreadable == []
    for k, choice in enumerate(chosen):
        paths = [p for p, label in zip(valset.paths, valset.labels) if label == choice.devkit_index][:4]
        inputs = [SMALL(read_image(p)).double().mean(dim=(1, 2)).numpy() for p in paths]
        expected = [expected_gates(p) for p in inputs]
        for layer in result.layers:
            want = np.mean([e[layer.path] for e in expected], axis=0)
            np.testing.assert_allclose(result.mean_gates[layer.name][k], want, rtol=1e-6, atol=0)
    assert np.array_equal(
        result.mean_gates["layer1.1.se"], np.tile(torch.sigmoid(B2).double().numpy(), (3, 1))
    )

    layer = result.layers[0]
    figure = plot_layer(result, layer)
    (ax,) = figure.axes
    assert layer.name in ax.get_title()
    assert [line.get_label() for line in ax.get_lines()] == [c.name for c in chosen]
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [c.name for c in chosen]
    for line, row in zip(ax.get_lines(), result.mean_gates[layer.name]):
        assert np.array_equal(line.get_ydata(), row)
    overview = plot_overview(result)
    assert [a.get_title() for a in overview.axes] == [layer.name for layer in result.layers]
    assert all(len(a.get_lines()) == len(chosen) for a in overview.axes)


def test_unreadable_images_are_left_out_and_listed(fake: FakeImageNet, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    shutil.copytree(fake.layouts["flat"], flat)
    valset = open_valset(flat)
    choice = resolve_class(fake_classes(fake)[0])
    broken = next(p for p, label in zip(valset.paths, valset.labels) if label == choice.devkit_index)
    broken.write_bytes(broken.read_bytes()[:200])
    net = known_net()
    result = collect_excitations(
        net,
        valset,
        [choice],
        se_layers(net),
        preprocess=SMALL,
        per_class=5,
        device=CPU,
        batch_size=2,
        progress=False,
    )
    assert result.images == [4]
    assert [name for name, _ in result.unreadable] == [broken.name]
    assert np.array_equal(result.mean_gates["layer1.1.se"][0], torch.sigmoid(B2).double().numpy())


def test_summary_definitions() -> None:
    gates = np.array([[0.995, 0.005, 0.5, 0.25], [0.999, 0.2, 0.5, 0.75]])
    summary = summarize(SELayer("SE_x", "x.se", "x", 4), gates)
    assert summary.spread == pytest.approx((0.002 + 0.0975 + 0.0 + 0.25) / 4)
    assert (summary.frac_above, summary.frac_below) == (2 / 8, 1 / 8)
    assert summary.mean_gate == pytest.approx(gates.sum() / 8)


# ----------------------------------------------------------------------------- classes and layers


def test_classes_by_wnid_index_in_either_order_or_name() -> None:
    assert [c.wnid for c in resolve_classes("goldfish, pug,plane,cliff")] == [
        "n01443537",
        "n02110958",
        "n03954731",
        "n09246464",
    ]
    assert resolve_class("devkit:0").wnid == "n02119789"  # kit fox, first in the devkit
    assert resolve_class("torchvision:0").wnid == "n01440764"  # tench, first by WordNet id
    tench = resolve_class("n01440764")
    assert (tench.devkit_index, tench.torchvision_index, tench.name) == (448, 0, "tench")
    assert resolve_class("Goldfish").wnid == resolve_class("devkit:449").wnid == "n01443537"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("crane", "ambiguous: n02012849 (crane), n03126707 (crane); give the WordNet id"),
        ("goldfsh", "unknown class name 'goldfsh'; close names: 'goldfish'"),
        ("1", "devkit:1 (ILSVRC2012 devkit"),
        ("devkit:1000", "outside 0..999"),
        ("n00000001", "not one of the 1000 classes"),
        ("pug,n02110958", "given twice"),
        (" , ", "no classes given"),
    ],
)
def test_bad_classes_are_refused_with_candidates(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        resolve_classes(spec)
    assert message in str(caught.value)


def test_layer_names_and_the_papers_auto_choice() -> None:
    model = se_resnet50()
    layers = se_layers(model, "se_resnet50")
    assert len(layers) == 16 and layers[0].name == "SE_2_1" and layers[0].caffe == "conv2_1"
    assert [layer.name for layer in select_layers(layers, "auto")] == PAPER_LAYERS
    assert [layer.name for layer in select_layers(layers, "se_4_6, layer3.5.se,layer3.5,conv4_6,SE_2_1")] == [
        "SE_4_6",
        "SE_2_1",
    ]
    with pytest.raises(ExcitationError, match="unknown SE layer 'SE_9_9'; this model's are SE_2_1, SE_2_2"):
        select_layers(layers, "SE_9_9")
    inception = se_layers(se_bn_inception(), "se_bn_inception")
    assert [layer.name for layer in select_layers(inception, "auto")] == [
        "SE_inception_3c",
        "SE_inception_4e",
        "SE_inception_5a",
        "SE_inception_5b",
    ]
    assert [layer.name for layer in select_layers(se_layers(known_net()), "auto")] == [
        "layer1.1.se",
        "layer2.0.se",
    ]


# ----------------------------------------------------------------------------- the command


def svg_curve_ids(path: Path) -> list[str]:
    return [
        element.get("id", "")
        for element in ElementTree.parse(path).iter()
        if (element.get("id") or "").startswith("gate-curve-")
    ]


def test_command_writes_figures_data_and_a_summary_that_agree(
    fake: FakeImageNet, resnet_weights: Path, tmp_path: Path
) -> None:
    wnids = fake_classes(fake)
    classes = imagenet.imagenet_classes()
    name = classes.name(classes.index(wnids[3]))  # 'cicada' with seed 0: one class has that name
    keys = [
        wnids[0],
        f"devkit:{classes.index(wnids[1])}",
        f"torchvision:{imagenet.imagenet_classes(imagenet.ClassOrder.TORCHVISION).index(wnids[2])}",
        name,
    ]
    out = tmp_path / "figs"
    result = CliRunner().invoke(
        excitations,
        [
            "--model",
            "se_resnet50",
            "--weights",
            str(resnet_weights),
            "--data",
            str(fake.layouts["torchvision"]),
            "--classes",
            ",".join(keys),
            "--per-class",
            "3",
            "--out",
            str(out),
            "--resize",
            "40",
            "--crop",
            "32",
            "--workers",
            "0",
            "--batch-size",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    chosen = wnids[:4]
    names = {path.name for path in out.iterdir()}
    assert names == {f"{layer}.{ext}" for layer in [*PAPER_LAYERS, "overview"] for ext in ("png", "svg")} | {
        "gates.json",
        "gates.csv",
        "summary.csv",
        "summary.txt",
    }
    assert all(
        (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in names if name.endswith(".png")
    )

    document = json.loads((out / "gates.json").read_text())
    assert [c["wnid"] for c in document["classes"]] == chosen
    assert [c["images"] for c in document["classes"]] == [3, 3, 3, 3]
    assert [layer["name"] for layer in document["layers"]] == PAPER_LAYERS
    assert [layer["channels"] for layer in document["layers"]] == [256, 512, 1024, 2048, 2048, 2048]

    csv_rows = list(csv.DictReader((out / "gates.csv").open()))
    assert len(csv_rows) == 4 * (256 + 512 + 1024 + 3 * 2048)
    from_csv: dict[tuple[str, str], list[float]] = {}
    for row in csv_rows:
        from_csv.setdefault((row["layer"], row["wnid"]), []).append(float(row["mean_gate"]))
    summary_csv = {row["layer"]: row for row in csv.DictReader((out / "summary.csv").open())}
    assert result.stdout == (out / "summary.txt").read_text()  # the printed table is the saved one
    table = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    for layer in document["layers"]:
        gates = np.array([layer["mean_gates"][wnid] for wnid in chosen])
        assert gates.shape == (4, layer["channels"]) and ((gates > 0) & (gates < 1)).all()
        assert all(from_csv[layer["name"], wnid] == layer["mean_gates"][wnid] for wnid in chosen)
        # The summary, recomputed from the JSON's vectors by its own definitions.
        summary = layer["summary"]
        recomputed = {
            "spread": gates.std(axis=0).mean(),
            f"frac_above_{HIGH}": (gates > HIGH).mean(),
            f"frac_below_{LOW}": (gates < LOW).mean(),
            "mean_gate": gates.mean(),
        }
        for key, value in recomputed.items():
            assert summary[key] == pytest.approx(value, rel=1e-12, abs=1e-15)
            assert float(summary_csv[layer["name"]][key]) == summary[key]
        printed = table[layer["name"]]
        assert printed[1] == layer["path"] and int(printed[2]) == layer["channels"]
        assert float(printed[3]) == pytest.approx(summary["spread"], abs=5e-5)
        assert float(printed[6]) == pytest.approx(summary["mean_gate"], abs=5e-5)
        # One curve per class, in the saved SVG of the layer and in the overview.
        assert sorted(svg_curve_ids(out / f"{layer['name']}.svg")) == sorted(
            f"gate-curve-{w}" for w in chosen
        )
    assert sorted(svg_curve_ids(out / "overview.svg")) == sorted(
        f"gate-curve-{layer}-{w}" for layer in PAPER_LAYERS for w in chosen
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--classes", "crane"],
            "error: class name 'crane' is ambiguous: n02012849 (crane), n03126707 (crane)",
        ),
        (["--classes", "goldfish"], "error: no images of goldfish (n01443537) in"),
        (["--classes", "throne", "--layers", "SE_9_9"], "error: unknown SE layer 'SE_9_9'"),
        (["--classes", "throne", "--model", "resnet50"], "error: unknown model 'resnet50'"),
    ],
)
def test_command_bad_input_is_one_line_with_exit_code_2(
    fake: FakeImageNet, resnet_weights: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    base = {
        "--model": "se_resnet50",
        "--weights": str(resnet_weights),
        "--data": str(fake.layouts["flat"]),
        "--out": str(tmp_path / "figs"),
        "--workers": "0",
        "--crop": "32",
        "--resize": "40",
    }
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = CliRunner().invoke(excitations, [item for pair in base.items() for item in pair])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(message) and all(
        line.startswith("  ") or "excitations:" in line for line in lines[:-1]
    )
    assert not (tmp_path / "figs").exists()


def test_command_never_replaces_existing_results_without_force(
    fake: FakeImageNet, resnet_weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "figs"
    out.mkdir()
    (out / "gates.json").write_text("earlier results")
    args = ["--model", "se_resnet50", "--weights", str(resnet_weights), "--data", str(fake.layouts["flat"])]
    args += ["--classes", "throne", "--out", str(out), "--workers", "0", "--crop", "32", "--resize", "40"]
    assert_one_line_error(CliRunner().invoke(excitations, args), "gates.json", "exists", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["gates.json"]
    assert (out / "gates.json").read_text() == "earlier results"
