"""What a run writes for TensorBoard, all into the run's own directory (one event file per process).

Every chart's x axis is the global step (optimizer steps taken), so the per-step training curves
and the per-epoch validation curves overlay; epoch e ends at step e × (steps per epoch), and the
scalar ``epoch`` maps one onto the other.

Scalars:

    loss/train  accuracy/train  lr                  every --log-every steps: the mean over those steps
    grad_norm/layer{i}  grad_norm/first_over_last   ‖∂ℓ/∂θ‖ of each layer's weight and bias, as above;
                                                    a deep sigmoid net's vanishing gradient
    loss/val  accuracy/val  accuracy/val_balanced  weight_norm/layer{i}  epoch     per epoch
    grad_check/layer{i}  grad_check/worst_layer     with --check-grads-every: ‖g − g_builtin‖ / ‖g_builtin‖
    hparam/best_val_accuracy  hparam/best_val_balanced_accuracy   per epoch; hparam/test_* at the end

Custom scalars (its own tab): loss and accuracy, train and val on one chart each; every layer's
gradient norm on one chart; the gradient check's layers on one chart.

Images, every --histogram-every epochs and at the last: ``templates`` (the first layer's
``W − W_init``), ``confusion/val``, ``gradients/norm_by_layer`` (log scale, one line per epoch);
``confusion/test`` at the end. Histograms, as often: ``weights/layer{i}``, ``gradients/layer{i}``,
``activations/hidden{i}``. Text: ``config``. HPARAMS: the run's hyperparameters (only those that
apply, see :mod:`mlp_torch.training.hparams`) from its start, the ``hparam/*`` metrics as they come.

A write that fails (a full disk, a file-size limit) raises :class:`~mlp_torch.errors.WriteError`
naming the run's folder and the cause. TensorBoard writes from a background thread and re-raises
its error at the next call; that thread's own traceback is not printed.
"""

from __future__ import annotations

import functools
import io
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import PIL.Image
from google.protobuf import struct_pb2
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.scalar.metadata import create_summary_metadata as scalar_metadata
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from ..errors import WriteError
from ..models import Classifier
from .hparams import HParamValue, hparam_domains

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# the HPARAMS table shows five hyperparameters until others are ticked: these (it shows first
# those marked as differing between runs, so they are marked)
HEADLINE_HPARAMS = ("model", "hidden", "activation", "backend", "lr")
HPARAM_METRICS = {
    "hparam/test_accuracy": "test accuracy (best checkpoint)",
    "hparam/test_balanced_accuracy": "test balanced accuracy (best checkpoint)",
    "hparam/best_val_accuracy": "best validation accuracy",
    "hparam/best_val_balanced_accuracy": "best validation balanced accuracy (chooses the checkpoint)",
}

Method = TypeVar("Method", bound=Callable[..., Any])


def _writes(method: Method) -> Method:
    """Turn a failed write into one :class:`WriteError` that names the log's folder."""

    @functools.wraps(method)
    def guarded(self: RunLogger, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OSError as err:
            raise WriteError(f"cannot write the TensorBoard log in {self.run_dir}: {err.strerror or err}") from None

    return guarded  # type: ignore[return-value]


class RunLogger:
    """A thin layer over ``SummaryWriter`` with the tags this project uses."""

    @_writes
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.closed = False
        _quiet_writer_threads()
        _after_the_last_event_file(Path(run_dir))
        self.writer = SummaryWriter(log_dir=str(run_dir))

    @_writes
    def config(self, config: dict[str, Any]) -> None:
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2) + "\n```", 0)

    @_writes
    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    @_writes
    def described_scalars(self, values: dict[str, float], step: int, description: Callable[[str], str]) -> None:
        """Scalars whose chart carries a description (markdown), e.g. how to read them."""
        described = [
            Summary.Value(
                tag=tag, simple_value=value, metadata=scalar_metadata(display_name=tag, description=description(tag))
            )
            for tag, value in values.items()
        ]
        summary = Summary(value=described)
        self.writer._get_file_writer().add_summary(summary, step)

    @_writes
    def layer_norms(self, model: Classifier, step: int) -> None:
        """``weight_norm/layer{i}``: ‖θ‖ of each layer's weight and bias."""
        for i, layer in enumerate(model.layers):
            self.writer.add_scalar(f"weight_norm/layer{i}", _layer_norm(list(layer.parameters())), step)

    @_writes
    def histograms(self, model: Classifier, hidden: list[Tensor], step: int) -> None:
        for i, layer in enumerate(model.layers):
            self.writer.add_histogram(f"weights/layer{i}", layer.weight.detach().float().cpu(), step)
            if layer.weight.grad is not None:
                self.writer.add_histogram(f"gradients/layer{i}", layer.weight.grad.detach().float().cpu(), step)
        for i, h in enumerate(hidden):
            self.writer.add_histogram(f"activations/hidden{i}", h.detach().float().cpu(), step)

    @_writes
    def image(self, tag: str, image: Tensor, step: int) -> None:
        """A ``(3, H, W)`` uint8 image, as a PNG made for speed (``add_image``'s takes 2-3x as long, for 5 % less)."""
        _, height, width = image.shape
        png = io.BytesIO()
        PIL.Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(png, format="PNG", compress_level=1)
        encoded = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png.getvalue())
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)

    def figure(self, tag: str, fig: Figure, step: int) -> None:
        from .run_figures import figure_to_image  # matplotlib, imported when a run first draws

        self.image(tag, figure_to_image(fig), step)

    @_writes
    def layout(self, layers: int, grad_check: bool) -> None:
        """The custom-scalars tab: curves that belong on one chart (every layer's gradient norm, …)."""
        gradients = {
            "‖∂ℓ/∂θ‖ of every layer (log scale: the button under the chart)": ["Multiline", [r"grad_norm/layer\d+$"]],
        }
        if layers > 1:
            gradients["layer 0 / last layer"] = ["Multiline", [r"grad_norm/first_over_last$"]]
        layout = {
            "training": {
                "loss: train (mean over --log-every steps) and val": ["Multiline", [r"loss/(train|val)$"]],
                "accuracy: train and val": ["Multiline", [r"accuracy/(train|val|val_balanced)$"]],
            },
            "vanishing gradient": gradients,
        }
        if grad_check:
            check = {"‖g − g_builtin‖ / ‖g_builtin‖ per layer": ["Multiline", [r"grad_check/layer\d+$"]]}
            layout["gradient check"] = check
        self.writer.add_custom_scalars(layout)

    @_writes
    def hparams_start(self, values: dict[str, HParamValue]) -> None:
        """The HPARAMS tab's definition and this run's hyperparameters, in this run's own event file.

        The definition (every hyperparameter any run may have, and the metrics) is the same for
        every run, so TensorBoard, which reads one run's, shows all runs of a folder alike.
        """
        session = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, value in values.items():
            if isinstance(value, bool):  # before int: a bool is an int to Python
                session.hparams[name].bool_value = value
            elif isinstance(value, (int, float)):
                session.hparams[name].number_value = value
            else:
                session.hparams[name].string_value = value
        self._hparams_summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=_experiment()))
        self._hparams_summary(
            metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=session)
        )

    @_writes
    def hparams_end(self, success: bool) -> None:
        status = api_pb2.Status.STATUS_SUCCESS if success else api_pb2.Status.STATUS_FAILURE
        end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
        self._hparams_summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))

    def _hparams_summary(self, tag: str, content: plugin_data_pb2.HParamsPluginData) -> None:
        content.version = metadata.PLUGIN_DATA_VERSION
        plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
        summary = Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])
        self.writer._get_file_writer().add_summary(summary)

    @_writes
    def close(self) -> None:
        """Flush and close the event file; safe to call again (also after a failure)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.writer.flush()
        finally:
            self.writer.close()


def _experiment() -> api_pb2.Experiment:
    """Every hyperparameter a run may have (typed; choices as filter boxes) and the ``hparam/*`` metrics."""
    kinds = {
        bool: api_pb2.DataType.DATA_TYPE_BOOL,
        float: api_pb2.DataType.DATA_TYPE_FLOAT64,
        str: api_pb2.DataType.DATA_TYPE_STRING,
    }
    infos = []
    for name, domain in hparam_domains().items():
        info = api_pb2.HParamInfo(name=name, type=kinds[domain.kind], differs=name in HEADLINE_HPARAMS)
        if domain.kind is bool:
            values = [struct_pb2.Value(bool_value=v) for v in (False, True)]
            info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=values))
        elif domain.choices:
            values = [struct_pb2.Value(string_value=v) for v in domain.choices]
            info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=values))
        infos.append(info)
    metrics = [
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag.split("/", 1)[1], description=text)
        for tag, text in HPARAM_METRICS.items()
    ]
    return api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics)


def _after_the_last_event_file(run_dir: Path) -> None:
    """Wait, if need be, until a new event file's name sorts after the run's last one.

    TensorBoard reads a run's event files in name order, and the name's clock is whole seconds
    (``events.out.tfevents.<seconds>.<host>.<pid>.<counter>``): a run resumed within the second its
    last file was made (``train(..., resume=)`` right after a short ``train``) could be read first,
    and its epochs dropped as out of order.
    """
    now = int(time.time())
    stamps = [p.name.split(".")[3] for p in run_dir.glob("events.out.tfevents.*")]
    if str(now).zfill(10) in stamps:
        time.sleep(max(0.0, now + 1 - time.time()))


def _quiet_writer_threads() -> None:
    """Keep TensorBoard's writer thread from printing a traceback when a write fails.

    The thread stores its error and the main thread gets it from the next call, where
    :func:`_writes` turns it into one line; the thread's own report would be a second, raw one.
    """
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)

    hook.quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _layer_norm(tensors: Sequence[Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().square().sum()) for t in tensors))
