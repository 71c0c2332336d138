"""The Open Inference Protocol (V2) infer endpoint's body: parse a request, render an answer.

``POST /v2/models/{name}[/versions/{version}]/infer`` takes the same path through the
endpoint as ``POST /predict`` (service/http/endpoint.py: read, parse, data plane, render);
only the body's shape differs. The model has one input and three outputs:

- ``text``: ``BYTES [N]``, UTF-8 titles, as JSON strings or in the binary tensor extension
  (an ``Inference-Header-Content-Length`` header; tritonclient's default for numpy inputs);
- ``probabilities``: ``FP32 [N, C]``, classes in the order the model metadata lists;
- ``label``: ``BYTES [N]``, the most probable class; ``empty``: ``BOOL [N]``, nothing left of
  the text after preprocessing.

The texts obey the rules ``/predict`` does (at most ``max_texts``, each at most ``max_chars``
characters, none blank), and the parser's work is bounded by the body size the endpoint
already caps: one msgspec decode, then checks that stop at the first problem. Answers are
JSON whatever binary output a client asks for; every client reads JSON outputs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgspec

from service.errors import InvalidRequest, MalformedBody, ServiceError, UnknownModel
from service.http.predict_body import is_blank
from service.inference.predictor import Prediction

INPUT = "text"
OUTPUTS = ("probabilities", "label", "empty")
BINARY_HEADER = "Inference-Header-Content-Length"
_encode = msgspec.json.Encoder().encode
_LENGTH = struct.Struct("<I")


class _Tensor(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: list[str] | msgspec.UnsetType = msgspec.UNSET  # absent when the tensor is binary
    parameters: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class _Output(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class _Request(msgspec.Struct):
    inputs: list[_Tensor]
    id: str | msgspec.UnsetType = msgspec.UNSET
    parameters: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    outputs: list[_Output] | msgspec.UnsetType = msgspec.UNSET


@dataclass(frozen=True, slots=True)
class InferTarget:
    """What the URL names: the model and, optionally, one of its versions."""

    model: str
    version: str | None


@dataclass(slots=True)
class InferCall:
    """A parsed infer request: the texts, and what the answer must carry."""

    texts: list[str]
    id: str | None
    outputs: tuple[str, ...]


def infer_target(path: str) -> InferTarget | None:
    """``/v2/models/{name}[/versions/{version}]/infer`` -> its target; None for any other path."""
    parts = path.split("/")
    # ["", "v2", "models", name, "infer"] or ["", "v2", "models", name, "versions", v, "infer"]
    if len(parts) == 5 and parts[4] == "infer" and parts[2] == "models" and parts[3]:
        return InferTarget(parts[3], None)
    if len(parts) == 7 and parts[6] == "infer" and parts[4] == "versions" and parts[2] == "models" and parts[3]:
        return InferTarget(parts[3], parts[5]) if parts[5] else None
    return None


class InferBodyParser:
    """``parse(body, target, header_length)`` for one server's model name and limits."""

    def __init__(self, model_name: str, max_texts: int, max_chars: int) -> None:
        self.model_name = model_name
        self.max_texts = max_texts
        self.max_chars = max_chars
        self._decode = msgspec.json.Decoder(_Request).decode

    def parse(self, body: bytes, target: InferTarget, header_length: bytes | None) -> InferCall | ServiceError:
        """The call, or the error to answer with (returned, not raised: see PredictBodyParser)."""
        if target.model != self.model_name:
            return UnknownModel(f"unknown model {target.model[:100]!r}; this server serves {self.model_name!r}")
        binary = b""
        if header_length is not None:
            split = _header_length(header_length, len(body))
            if isinstance(split, ServiceError):
                return split
            body, binary = body[:split], body[split:]
        try:
            request = self._decode(body)
        except msgspec.ValidationError as exc:
            return InvalidRequest(f"not a valid inference request: {_clip(str(exc))}")
        except (msgspec.DecodeError, ValueError) as exc:  # ValueError: invalid UTF-8 inside a string
            return MalformedBody(f"body is not valid UTF-8 encoded JSON ({_clip(str(exc))})")
        if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
            names = [t.name[:40] for t in request.inputs[:4]]
            return InvalidRequest(f"expected one input named {INPUT!r} (BYTES [N]), got {names}")
        texts = self._texts(request.inputs[0], binary)
        if isinstance(texts, ServiceError):
            return texts
        outputs: tuple[str, ...] = OUTPUTS
        if request.outputs is not msgspec.UNSET:
            unknown = [o.name[:40] for o in request.outputs if o.name not in OUTPUTS]
            if unknown:
                return InvalidRequest(f"unknown output {unknown[0]!r}; this model's outputs are {', '.join(OUTPUTS)}")
            asked = {o.name for o in request.outputs}
            outputs = tuple(name for name in OUTPUTS if name in asked)
        request_id = None if request.id is msgspec.UNSET else request.id
        return InferCall(texts, request_id, outputs)

    def _texts(self, tensor: _Tensor, binary: bytes) -> list[str] | ServiceError:
        if tensor.datatype != "BYTES":
            return InvalidRequest(f"input {INPUT!r} must have datatype BYTES, not {tensor.datatype[:20]!r}")
        if len(tensor.shape) != 1:
            return InvalidRequest(f"input {INPUT!r} must have shape [N], not {tensor.shape[:8]}")
        count = tensor.shape[0]
        if count < 1:
            return InvalidRequest(f"input {INPUT!r}: shape [{count}]; at least one text is needed")
        if count > self.max_texts:
            return InvalidRequest(f"too many texts: {count} given, at most {self.max_texts} allowed")
        if tensor.data is msgspec.UNSET:
            texts = self._binary_texts(tensor, binary, count)
            if isinstance(texts, ServiceError):
                return texts
        else:
            if binary:
                return InvalidRequest(f"input {INPUT!r} has JSON data, but binary data follows the JSON header")
            texts = tensor.data
        if len(texts) != count:
            return InvalidRequest(f"input {INPUT!r}: shape [{count}] but {len(texts)} elements given")
        for i, text in enumerate(texts):
            if len(text) > self.max_chars:
                return InvalidRequest(
                    f"text too long: inputs[0].data[{i}] has {len(text)} characters, at most {self.max_chars} allowed"
                )
            if is_blank(text):
                return InvalidRequest(f"inputs[0].data[{i}] must not be empty or whitespace only")
        return texts

    def _binary_texts(self, tensor: _Tensor, binary: bytes, count: int) -> list[str] | ServiceError:
        """BYTES elements of the binary extension: each a little-endian uint32 length and its bytes."""
        size = None if tensor.parameters is msgspec.UNSET else tensor.parameters.get("binary_data_size")
        if type(size) is not int or size != len(binary):
            return InvalidRequest(
                f"input {INPUT!r} has no 'data'; with binary data its parameters.binary_data_size must be "
                f"the {len(binary)} bytes after the JSON header"
            )
        texts: list[str] = []
        pos = 0
        max_bytes = 4 * self.max_chars  # a UTF-8 character is at most 4 bytes
        while pos < len(binary):
            if len(texts) == count:
                return InvalidRequest(f"input {INPUT!r}: shape [{count}] but more binary elements follow")
            if pos + 4 > len(binary):
                return MalformedBody(f"binary input {INPUT!r} ends inside an element's length at byte {pos}")
            (length,) = _LENGTH.unpack_from(binary, pos)
            pos += 4
            if length > max_bytes:
                return InvalidRequest(
                    f"text too long: binary element {len(texts)} has {length} bytes, "
                    f"more than {self.max_chars} characters can be"
                )
            if pos + length > len(binary):
                return MalformedBody(f"binary input {INPUT!r}: element {len(texts)} runs past the body's end")
            try:
                texts.append(binary[pos : pos + length].decode("utf-8"))
            except UnicodeDecodeError:
                return MalformedBody(f"binary input {INPUT!r}: element {len(texts)} is not UTF-8")
            pos += length
        return texts


def _header_length(value: bytes, body_length: int) -> int | ServiceError:
    text = value.decode("latin-1").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 15 or int(text) > body_length:
        return MalformedBody(f"bad {BINARY_HEADER} header {text[:40]!r}: expected the JSON header's size in bytes")
    return int(text)


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_infer(call: InferCall, prediction: Prediction, model_name: str) -> bytes:
    """The 200 body: the outputs asked for (all three by default), the version that computed them, the id."""
    n = len(prediction.empty)
    outputs: list[dict[str, Any]] = []
    for name in call.outputs:
        if name == "probabilities":
            probabilities = prediction.probabilities
            outputs.append(
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": [n, len(prediction.classes)],
                    "data": probabilities.ravel().tolist(),
                }
            )
        elif name == "label":
            classes = prediction.classes
            labels = [classes[i] for i in prediction.probabilities.argmax(axis=1).tolist()]
            outputs.append({"name": name, "datatype": "BYTES", "shape": [n], "data": labels})
        else:
            outputs.append({"name": name, "datatype": "BOOL", "shape": [n], "data": prediction.empty})
    answer: dict[str, Any] = {"model_name": model_name, "model_version": prediction.version}
    if call.id is not None:
        answer["id"] = call.id
    answer["outputs"] = outputs
    return _encode(answer)
