"""Distillation fine-tune: the torch graph matches onnxruntime, training moves the student toward the teacher,
checkpoints resume exactly, and runs are deterministic. Real onnxruntime, real torch, real or tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cutq.quantize.verify import session_for
from cutq_runtime import models
from cutq_runtime.fsutil import file_digest
from cutq_runtime.registry import InputSpec
from tests.conftest import CALIBRATION
from tests.tiny import two_conv_model

ROOT = Path(__file__).resolve().parents[1]


def test_missing_torch_is_a_clear_error_naming_the_extra() -> None:
    """`sys.modules['torch'] = None` is how Python itself marks a module as not importable: a real ImportError."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from cutq.distill.finetune import FinetuneConfig, finetune\n"
        "from cutq_runtime.errors import CutqError\n"
        "from tests.tiny import two_conv_model\n"
        "m = two_conv_model()\n"
        "try:\n"
        "    finetune(m, m, [np.zeros((1, 3, 16, 16), np.float32)], FinetuneConfig())\n"
        "except CutqError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "pip install 'cutq[train]'" in result.stdout


def test_importing_cutq_its_cli_and_the_config_loads_no_torch() -> None:
    code = ("import sys, cutq.cli, cutq.quantize.pipeline, cutq.distill.finetune, cutq.benchmarks.report\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


def test_finetune_is_not_a_command() -> None:
    # No setting measured so far brought a pruned u2net closer to its teacher: fine-tuning is reachable from Python only.
    proc = subprocess.run([str(Path(sys.executable).parent / "cutq"), "finetune", "--help"], capture_output=True,
                          text=True, check=False, cwd=ROOT)
    assert proc.returncode == 2 and "No such command 'finetune'" in proc.stderr, proc.stderr


torch = pytest.importorskip("torch")

from cutq.distill.checkpoint import fingerprint  # noqa: E402  (needs torch only for the tests below)
from cutq.distill.finetune import FinetuneConfig, finetune  # noqa: E402
from cutq.distill.graph_module import GraphModule  # noqa: E402
from cutq.distill.pipeline import FinetuneJob, run  # noqa: E402
from cutq_runtime.errors import CutqError, ModelError  # noqa: E402

TINY_CONFIG = FinetuneConfig(epochs=6, lr=1e-2, batch_size=2, threads=1)


def _run_ort(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = session_for(model, 1)
    return session.run(None, {session.get_inputs()[0].name: x})


def _run_torch(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in GraphModule(model)(torch.from_numpy(x))]


def sliced(model: onnx.ModelProto, keep: list[int]) -> onnx.ModelProto:
    """The two-conv model with conv_a's output channels (and conv_b's matching inputs) cut to `keep`: pruned by hand."""
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    arrays.update(wa=arrays["wa"][keep], ba=arrays["ba"][keep], wb=arrays["wb"][:, keep])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arrays[init.name]), init.name))
    return out


def resize_model() -> onnx.ModelProto:
    """U²-Net's pattern: pool, conv, upsample back to a sibling's size via Shape/Gather/Slice/Concat/Cast, concat."""
    rng = np.random.default_rng(3)
    init = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1"),
            numpy_helper.from_array(rng.standard_normal((1, 7, 1, 1)).astype(np.float32), "w2")]
    const = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(np.array(v, np.int64)))
             for n, v in (("i2", 2), ("i3", 3), ("s0", [0]), ("s1", [2]), ("ax", [0]))]
    nodes = [
        *const,
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        helper.make_node("Conv", ["p", "w1", "b1"], ["c"], pads=[2, 2, 2, 2], dilations=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Shape", ["x"], ["sx"]), helper.make_node("Shape", ["r"], ["sr"]),
        helper.make_node("Gather", ["sx", "i2"], ["h"], axis=0), helper.make_node("Gather", ["sx", "i3"], ["w"], axis=0),
        helper.make_node("Unsqueeze", ["h"], ["h1"], axes=[0]), helper.make_node("Unsqueeze", ["w"], ["w1u"], axes=[0]),
        helper.make_node("Concat", ["h1", "w1u"], ["hw"], axis=0), helper.make_node("Cast", ["hw"], ["hwc"], to=7),
        helper.make_node("Slice", ["sr", "s0", "s1", "ax"], ["nc"]),
        helper.make_node("Concat", ["nc", "hwc"], ["size"], axis=0),
        helper.make_node("Constant", [], ["roi"], value=numpy_helper.from_array(np.zeros(0, np.float32))),
        helper.make_node("Constant", [], ["scales"], value=numpy_helper.from_array(np.zeros(0, np.float32))),
        helper.make_node("Resize", ["r", "roi", "scales", "size"], ["up"], mode="linear",
                         coordinate_transformation_mode="pytorch_half_pixel"),
        helper.make_node("Concat", ["up", "x"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["o"]),
        helper.make_node("Sigmoid", ["o"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 11, 13])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 11, 13])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=6)


def images(n: int, shape: tuple[int, ...] = (1, 3, 16, 16), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("model", [two_conv_model(), sliced(two_conv_model(), [0, 2, 5]), resize_model()],
                         ids=["two_conv", "two_conv_pruned", "maxpool_resize_concat"])
def test_graph_module_matches_onnxruntime_on_tiny_models(model: onnx.ModelProto) -> None:
    x = images(1, tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim))[0]
    for got, want in zip(_run_torch(model, x), _run_ort(model, x), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_graph_module_matches_onnxruntime_on_u2netp(u2netp_path: Path) -> None:
    model = onnx.load(u2netp_path)
    x = images(1, (1, 3, 320, 320), seed=1)[0]
    want = session_for(model, 2).run(None, {"input.1": x})
    got = _run_torch(model, x)
    assert len(got) == len(want) == 7
    assert max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True)) < 1e-4


def test_unsupported_op_is_refused_naming_the_node() -> None:
    model = two_conv_model()
    model.graph.node[1].op_type = "LeakyRelu"
    with pytest.raises(ModelError, match=r"LeakyRelu \(relu\)"):
        GraphModule(model)


def _kl(student: onnx.ModelProto, teacher: onnx.ModelProto, xs: list[np.ndarray]) -> float:
    """Mean Bernoulli KL between the two models' outputs on `xs`, both through onnxruntime."""
    total = 0.0
    for x in xs:
        t = np.clip(_run_ort(teacher, x)[0], 1e-6, 1 - 1e-6)
        s = np.clip(_run_ort(student, x)[0], 1e-6, 1 - 1e-6)
        total += float(np.mean(t * np.log(t / s) + (1 - t) * np.log((1 - t) / (1 - s))))
    return total / len(xs)


@pytest.mark.parametrize("config", [TINY_CONFIG, FinetuneConfig(**{**TINY_CONFIG.__dict__, "bf16": True, "flip": False})],
                         ids=["fp32_flip", "bf16_noflip"])
def test_finetune_moves_a_pruned_student_toward_its_teacher(config: FinetuneConfig) -> None:
    teacher = two_conv_model()
    student = sliced(teacher, [0, 2, 4, 6])
    train, held_out = images(8), images(4, seed=9)
    tuned, report = finetune(student, teacher, train, config)
    assert report.epoch_losses[-1] < 0.7 * report.epoch_losses[0]
    assert _kl(tuned, teacher, held_out) < 0.7 * _kl(student, teacher, held_out)
    assert [(t.name, list(t.dims)) for t in tuned.graph.initializer] == \
        [(t.name, list(t.dims)) for t in student.graph.initializer]
    assert tuned.graph.node == student.graph.node
    assert report.export_max_diff < 1e-5


def test_same_seed_same_bytes_and_other_seed_differs() -> None:
    teacher = two_conv_model()
    student = sliced(teacher, [1, 3, 5])
    first = finetune(student, teacher, images(6), TINY_CONFIG)[0].SerializeToString()
    again = finetune(student, teacher, images(6), TINY_CONFIG)[0].SerializeToString()
    other = finetune(student, teacher, images(6), FinetuneConfig(**{**TINY_CONFIG.__dict__, "seed": 1}))[0]
    assert first == again
    assert first != other.SerializeToString()


def test_resume_from_checkpoint_ends_with_the_same_weights(tmp_path: Path) -> None:
    teacher = two_conv_model()
    student = sliced(teacher, [0, 1, 7])
    train = images(6)
    straight = finetune(student, teacher, train, TINY_CONFIG)[0]
    path = tmp_path / "run.pt"
    half = FinetuneConfig(**{**TINY_CONFIG.__dict__, "epochs": 3, "checkpoint": path})
    finetune(student, teacher, train, half)  # "interrupted" after epoch 3: the checkpoint is what survives
    notes: list[str] = []
    resumed, report = finetune(student, teacher, train, FinetuneConfig(**{**half.__dict__, "epochs": 6}), note=notes.append)
    assert report.resumed_from == 3
    assert any("resuming after epoch 3" in n for n in notes)
    assert resumed.SerializeToString() == straight.SerializeToString()
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temp files left behind


def test_checkpoint_of_another_run_is_not_resumed(tmp_path: Path) -> None:
    teacher = two_conv_model()
    student = sliced(teacher, [0, 1, 7])
    path = tmp_path / "run.pt"
    config = FinetuneConfig(**{**TINY_CONFIG.__dict__, "epochs": 2, "checkpoint": path})
    finetune(student, teacher, images(6), config)
    notes: list[str] = []
    fresh, report = finetune(student, teacher, images(6, seed=5), config, note=notes.append)
    assert report.resumed_from == 0
    assert any("starting over" in n for n in notes)
    uninterrupted = finetune(student, teacher, images(6, seed=5), FinetuneConfig(**{**config.__dict__, "checkpoint": None}))[0]
    assert fresh.SerializeToString() == uninterrupted.SerializeToString()
    path.write_bytes(b"not a checkpoint")
    notes.clear()
    assert finetune(student, teacher, images(6), config, note=notes.append)[1].resumed_from == 0
    assert any("not a readable checkpoint" in n for n in notes)


def test_fingerprint_ignores_only_epochs_and_checkpoint_path() -> None:
    model, xs = two_conv_model(), images(2)
    base = fingerprint(model, model, xs, TINY_CONFIG.settings())
    assert base == fingerprint(model, model, xs, FinetuneConfig(**{**TINY_CONFIG.__dict__, "epochs": 9,
                                                                    "checkpoint": Path("x")}).settings())
    assert base != fingerprint(model, model, xs, FinetuneConfig(**{**TINY_CONFIG.__dict__, "lr": 0.5}).settings())
    assert base != fingerprint(model, model, images(2, seed=1), TINY_CONFIG.settings())


def _student_and_teacher_files(folder: Path) -> tuple[Path, Path]:
    teacher = two_conv_model()
    spec = models.input_spec_dict(InputSpec(size=(16, 16)))  # so the photos are preprocessed to the tiny input
    for name, model in (("teacher", teacher), ("student", sliced(teacher, [0, 2, 4, 6]))):
        onnx.save(model, folder / f"{name}.onnx")
        (folder / f"{name}.json").write_text(json.dumps({"input": spec}))
    return folder / "student.onnx", folder / "teacher.onnx"


def test_run_finetunes_a_student_file_and_writes_variant_files(tmp_path: Path) -> None:
    student, teacher = _student_and_teacher_files(tmp_path)
    out = tmp_path / "out" / "tuned.onnx"
    notes: list[str] = []
    result = run(FinetuneJob(student=str(student), teacher=str(teacher), images_dir=CALIBRATION, out=out,
                             config=FinetuneConfig(epochs=2, lr=0.01, threads=1)), note=notes.append)
    assert result.export.onnx_path == out
    assert any("verifying on" in n for n in notes)
    assert len(result.before.ssim_per_image) == len(result.after.ssim_per_image) > 0
    assert result.after.ssim_mean >= result.before.ssim_mean and result.checkpoint is None
    assert sorted(p.name for p in out.parent.iterdir()) == ["tuned.json", "tuned.onnx", "tuned.ort"]  # checkpoint removed
    manifest = json.loads(out.with_suffix(".json").read_text())
    step = manifest["steps"][0]
    assert (step["step"], step["epochs"], len(step["epoch_losses"])) == ("finetune", 2, 2)
    assert step["teacher"]["sha256"] == file_digest(teacher, "sha256")
    assert set(manifest["verification"]) >= {"before", "after", "images"} and "images" not in step
    assert manifest["verification"]["after"]["ssim_mean"] == result.after.ssim_mean
    assert len(manifest["verification"]["images"]) == len(result.after.ssim_per_image)
    assert manifest["schema_version"] == 1 and manifest["calibration"]["folder"] == str(CALIBRATION.resolve())
    assert set(manifest["calibration"]["images"]).isdisjoint(manifest["verification"]["images"])
    assert models.resolve(out).name == "tuned"  # the manifest's checksum matches the file


def test_run_writes_nothing_when_the_held_out_masks_get_worse(tmp_path: Path) -> None:
    student, teacher = _student_and_teacher_files(tmp_path)
    out = tmp_path / "out" / "tuned.onnx"
    job = FinetuneJob(student=str(student), teacher=str(teacher), images_dir=CALIBRATION, out=out,
                      config=FinetuneConfig(epochs=2, lr=10.0, threads=1))  # a step this large wrecks the weights
    with pytest.raises(CutqError, match="made the held-out masks worse"):
        run(job)
    assert [p.name for p in out.parent.iterdir()] == ["tuned.ckpt"]  # no variant; the checkpoint, to rerun from
    result = run(FinetuneJob(**{**job.__dict__, "keep_worse": True}))
    assert result.report.resumed_from == 2 and result.after.ssim_mean < result.before.ssim_mean
    assert sorted(p.name for p in out.parent.iterdir()) == ["tuned.json", "tuned.onnx", "tuned.ort"]
