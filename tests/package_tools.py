"""Helpers of the package tests: tiny real ONNX models, and tar surgery that makes hostile packages.

The tiny models are real ONNX graphs (built with ``onnx.helper``, run by ONNX Runtime) with the
inputs and outputs of registry models, so they pass the same compatibility checks as the real ones.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.updates.keys import key_id


def tiny_rnet(seed: int = 0, input_name: str = "input_2", opset: int = 13) -> bytes:
    """A model with R-Net's I/O: ``input_2 (N, 24, 24, 3)`` → ``dense_2 (N, 4)``, ``softmax_1 (N, 2)``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    boxes_w = numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "boxes_w")
    score_w = numpy_helper.from_array(rng.normal(size=(3, 2)).astype(np.float32), "score_w")
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["pooled"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["pooled", "boxes_w"], ["dense_2"]),
        helper.make_node("MatMul", ["pooled", "score_w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["softmax_1"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_rnet",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 24, 24, 3])],
        [
            helper.make_tensor_value_info("dense_2", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("softmax_1", TensorProto.FLOAT, ["N", 2]),
        ],
        [boxes_w, score_w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_embedder(dim: int = 128, seed: int = 0, batch: Optional[int] = 1) -> bytes:
    """A model with MobileFaceNet's I/O: ``input0 (1, 3, 112, 112)`` → ``output0 (1, dim)``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.normal(size=(3, dim)).astype(np.float32), "proj")
    first = batch if batch is not None else "batch"
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input0"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "proj"], ["output0"]),
        ],
        "tiny_embedder",
        [helper.make_tensor_value_info("input0", TensorProto.FLOAT, [first, 3, 112, 112])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [first, dim])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass
class Member:
    """One tar member to write: name, content, and for hostile packages a type and link target."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    pax: Optional[Dict[str, str]] = None


def read_members(path: Path) -> List[Member]:
    """The members of a package in order (read with tarfile: these are our own, trusted files)."""
    members = []
    with tarfile.open(path, "r:") as tar:
        for info in tar.getmembers():
            stream = tar.extractfile(info)
            members.append(Member(info.name, stream.read() if stream else b"", info.type, info.linkname))
    return members


def write_members(path: Path, members: Sequence[Member], fmt: int = tarfile.USTAR_FORMAT) -> Path:
    """Write ``members`` as a tar file exactly as given (duplicates, links and odd names included)."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.type
            info.linkname = member.linkname
            info.mode = 0o644
            info.mtime = 1_700_000_000
            if member.pax:
                info.pax_headers = dict(member.pax)
            if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return path


def signature_json(key: Ed25519PrivateKey, manifest: bytes, claimed_key_id: Optional[str] = None) -> bytes:
    """``manifest.sig`` for ``manifest`` signed by ``key`` (claiming another key id when asked)."""
    document = {
        "alg": "ed25519",
        "key_id": claimed_key_id or key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(manifest)).decode("ascii"),
    }
    return json.dumps(document).encode("ascii")


def resign(members: List[Member], key: Ed25519PrivateKey, manifest: dict) -> List[Member]:
    """Members with ``manifest`` (a dict) as manifest.json and a fresh valid signature by ``key``."""
    data = json.dumps(manifest, indent=2, sort_keys=True).encode("ascii")
    out = [Member("manifest.json", data), Member("manifest.sig", signature_json(key, data))]
    return out + [m for m in members if m.name not in ("manifest.json", "manifest.sig")]


def member_offsets(path: Path) -> List[tarfile.TarInfo]:
    """Header and data offsets of every member (``offset``, ``offset_data``, ``size``)."""
    with tarfile.open(path, "r:") as tar:
        return tar.getmembers()
