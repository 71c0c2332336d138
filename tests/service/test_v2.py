"""The Open Inference Protocol (V2): its routes in-process (every answer checked against the
protocol's JSON shapes), and a live server driven by tritonclient's own HTTP client."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from tests.service.conftest import TITLES, make_artifact, make_settings
from tests.service.live_server import launch_server
from tests.service.v2_protocol import check_answer, check_response, checked

VERSION = "20260101T000000Z-000001"
NAME = "headline-classifier"
INFER = f"/v2/models/{NAME}/infer"


@pytest.fixture(scope="module")
def v2(artifacts_dir: Path) -> Iterator[TestClient]:
    """The app in-process; every /v2 answer it gives is checked against the protocol's shapes."""
    settings = make_settings(artifacts_dir, max_texts_per_request=16, max_text_chars=500)
    with TestClient(create_app(settings)) as client:
        client.event_hooks["response"] = [check_response]
        yield client


def infer_body(texts: list[str], **extra: object) -> dict[str, object]:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}], **extra}


def outputs(answer: dict) -> dict[str, dict]:
    return {o["name"]: o for o in answer["outputs"]}


def test_health_and_server_metadata(v2: TestClient) -> None:
    assert v2.get("/v2/health/live").status_code == 200
    assert v2.get("/v2/health/ready").status_code == 200
    assert v2.head("/v2/health/ready").status_code == 200
    meta = v2.get("/v2").json()
    assert meta["name"] == NAME and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_names_tensors_classes_and_versions(v2: TestClient) -> None:
    for path in (f"/v2/models/{NAME}", f"/v2/models/{NAME}/versions/{VERSION}"):
        meta = v2.get(path).json()
        assert meta["name"] == NAME and meta["versions"] == [VERSION]
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        tensors = {t["name"]: t for t in meta["outputs"]}
        assert tensors["probabilities"]["datatype"] == "FP32" and tensors["probabilities"]["shape"] == [-1, 4]
        assert tensors["probabilities"]["parameters"]["classes"] == v2.get("/model").json()["categories"]
        assert tensors["label"]["datatype"] == "BYTES" and tensors["empty"]["datatype"] == "BOOL"
    assert v2.get(f"/v2/models/{NAME}/ready").status_code == 200
    assert v2.get(f"/v2/models/{NAME}/versions/{VERSION}/ready").status_code == 200


def test_unknown_model_or_version_is_404_in_the_protocols_error_shape(v2: TestClient) -> None:
    for method, path in [
        ("GET", "/v2/models/resnet"),
        ("GET", "/v2/models/resnet/ready"),
        ("GET", f"/v2/models/{NAME}/versions/20990101T000000Z-nope00"),
        ("GET", f"/v2/models/{NAME}/versions/nope/ready"),
        ("POST", "/v2/models/resnet/infer"),
        ("POST", f"/v2/models/{NAME}/versions/nope/infer"),
    ]:
        r = v2.request(method, path, json=infer_body(["Stocks rally"]))
        assert r.status_code == 404, (path, r.text)
        assert set(r.json()) == {"error"}
    assert VERSION in v2.get(f"/v2/models/{NAME}/versions/nope").json()["error"]  # lists what is served
    assert v2.get("/v2/nothing").json().keys() == {"error"}
    assert v2.get(INFER).status_code == 405


def test_v1_and_v2_give_the_same_probabilities_labels_and_empty_flags(v2: TestClient) -> None:
    texts = [*TITLES, "the of and"]
    v1 = v2.post("/predict", json={"texts": texts}).json()
    answer = v2.post(INFER, json=infer_body(texts, id="req-7")).json()
    assert answer["id"] == "req-7" and answer["model_name"] == NAME and answer["model_version"] == VERSION
    out = outputs(answer)
    classes = v2.get(f"/v2/models/{NAME}").json()["outputs"][0]["parameters"]["classes"]
    assert out["probabilities"]["shape"] == [len(texts), len(classes)]
    rows = np.array(out["probabilities"]["data"]).reshape(len(texts), len(classes))
    for row, label, empty, pred in zip(
        rows, out["label"]["data"], out["empty"]["data"], v1["predictions"], strict=True
    ):
        assert [pred["probabilities"][c] for c in classes] == row.tolist()  # the very same numbers
        assert label == pred["label"] and empty == pred["empty"]
    assert out["empty"]["data"][-1] is True


def test_outputs_asked_for_are_the_ones_answered_in_the_protocols_order(v2: TestClient) -> None:
    body = infer_body(
        ["Stocks rally"], outputs=[{"name": "empty"}, {"name": "label", "parameters": {"binary_data": True}}]
    )
    answer = v2.post(INFER, json=body).json()
    assert [o["name"] for o in answer["outputs"]] == ["label", "empty"]
    assert "id" not in answer


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{", 400, "not valid UTF-8 encoded JSON"),
        (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["\xff"]}]}', 400, "UTF-8"),
        (b"[]", 422, "not a valid inference request"),
        (json.dumps({"inputs": []}).encode(), 422, "expected one input named 'text'"),
        (
            json.dumps(
                infer_body(["a"]) | {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
            ).encode(),
            422,
            "named 'text'",
        ),
        (
            json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": ["a"]}]}).encode(),
            422,
            "BYTES",
        ),
        (
            json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}]}).encode(),
            422,
            "shape [N]",
        ),
        (
            json.dumps({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}).encode(),
            422,
            "1 elements",
        ),
        (
            json.dumps({"inputs": [{"name": "text", "shape": [0], "datatype": "BYTES", "data": []}]}).encode(),
            422,
            "at least one",
        ),
        (json.dumps(infer_body(["a"] * 17)).encode(), 422, "too many texts: 17 given, at most 16"),
        (json.dumps(infer_body(["a" * 501])).encode(), 422, "text too long"),
        (json.dumps(infer_body(["ok", "  \t"])).encode(), 422, "data[1] must not be empty or whitespace only"),
        (json.dumps(infer_body(["a"], outputs=[{"name": "logits"}])).encode(), 422, "unknown output 'logits'"),
        (
            json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [["a"]]}]}).encode(),
            422,
            "Expected `str`",
        ),
    ],
)
def test_bad_infer_requests_get_4xx_with_a_reason(v2: TestClient, body: bytes, status: int, words: str) -> None:
    r = v2.post(INFER, content=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_the_same_limits_as_predict(v2: TestClient) -> None:
    """Body size, deadline header and the request timeout apply as they do to /predict."""
    huge = b'{"inputs": [' + b" " * (20 * 1024 * 1024) + b"]}"
    r = v2.post(INFER, content=huge)
    assert r.status_code == 413 and "request body over" in r.json()["error"]
    r = v2.post(INFER, json=infer_body(["a"]), headers={"X-Request-Timeout-Ms": "soon"})
    assert r.status_code == 400 and "X-Request-Timeout-Ms" in r.json()["error"]


def binary_body(texts: list[str], declared: int | None = None) -> tuple[bytes, dict[str, str]]:
    """A request in the binary tensor extension, as tritonclient writes one."""
    data = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [len(texts)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(data) if declared is None else declared},
                }
            ]
        }
    ).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def test_binary_inputs_get_the_same_answer_as_json_inputs(v2: TestClient) -> None:
    texts = ["Stocks rally", "Federer wins the final", "Ünïcode headline"]
    body, headers = binary_body(texts)
    binary = v2.post(INFER, content=body, headers=headers).json()
    plain = v2.post(INFER, json=infer_body(texts)).json()
    assert binary["outputs"] == plain["outputs"]


def test_bad_binary_inputs_get_4xx(v2: TestClient) -> None:
    body, headers = binary_body(["Stocks rally"], declared=3)
    assert "binary_data_size" in v2.post(INFER, content=body, headers=headers).json()["error"]
    body, headers = binary_body(["Stocks rally"])
    r = v2.post(INFER, content=body[:-2], headers={**headers})
    assert r.status_code == 422  # the declared size no longer matches
    r = v2.post(INFER, content=body, headers={"Inference-Header-Content-Length": "99999"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    bad = body[: -len("Stocks rally")] + b"\xfftocks rally"
    assert "not UTF-8" in v2.post(INFER, content=bad, headers=headers).json()["error"]


def test_v2_routes_are_in_the_metrics_by_template(v2: TestClient) -> None:
    v2.post(INFER, json=infer_body(["Stocks rally"]))
    v2.get(f"/v2/models/{NAME}/versions/{VERSION}")
    text = v2.get("/metrics").text
    assert 'route="/v2/models/{name}/infer"' in text and 'route="/v2/models/{name}"' in text
    assert VERSION not in [line for line in text.splitlines() if "hc_http_requests_total{" in line].__str__()


def test_every_v2_answer_above_was_checked_against_the_protocols_shapes() -> None:
    """The response hook saw answers of every kind (so the checks above were not vacuous)."""
    seen = {(method, status) for method, _, status in checked}
    assert {("GET", 200), ("POST", 200), ("GET", 404), ("POST", 422), ("POST", 400), ("POST", 413)} <= seen
    with pytest.raises(AssertionError):
        check_answer("POST", INFER, 200, b'{"model_name": "m", "outputs": [{"name": "x"}]}')
    with pytest.raises(AssertionError):
        check_answer("GET", "/v2/models/m", 404, b'{"error": {"type": "not_found"}}')


# -- a real client ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live_v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server (model process and all) with a second version on disk; its host:port."""
    root = tmp_path_factory.mktemp("artifacts-v2")
    make_artifact(root, seed=0, version=VERSION)
    with launch_server(root, "--max-texts-per-request", "64", "--version", VERSION) as server:
        yield server.url.removeprefix("http://")


def test_tritonclient_health_metadata_and_infer(live_v2: str) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(live_v2)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, VERSION)
    assert not client.is_model_ready(NAME, "20990101T000000Z-nope00")
    meta = client.get_model_metadata(NAME)
    assert meta["versions"] == [VERSION] and meta["inputs"][0]["datatype"] == "BYTES"
    assert client.get_server_metadata()["name"] == NAME
    classes = meta["outputs"][0]["parameters"]["classes"]

    titles = np.array([t.encode() for t in TITLES], dtype=np.object_)
    answers = []
    for binary in (True, False):  # tritonclient's default (binary tensor extension) and plain JSON
        text = triton.InferInput("text", [len(TITLES)], "BYTES")
        text.set_data_from_numpy(titles, binary_data=binary)
        result = client.infer(NAME, [text], model_version=VERSION, request_id="abc")
        assert result.get_response()["id"] == "abc" and result.get_response()["model_version"] == VERSION
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (len(TITLES), len(classes)) and probabilities.dtype == np.float32
        labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]
        assert labels == [classes[i] for i in probabilities.argmax(axis=1)]
        assert result.as_numpy("empty").tolist() == [False] * len(TITLES)
        answers.append(probabilities)
    np.testing.assert_array_equal(answers[0], answers[1])

    import httpx

    v1 = httpx.post(f"http://{live_v2}/predict", json={"texts": TITLES}).json()["predictions"]
    np.testing.assert_array_equal(
        answers[0], np.array([[p["probabilities"][c] for c in classes] for p in v1], dtype=np.float32)
    )
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("resnet", [text])
    client.close()


def test_live_v2_answers_have_the_protocols_shapes(live_v2: str) -> None:
    import httpx

    base = f"http://{live_v2}"
    for method, path, body in [
        ("GET", "/v2", None),
        ("GET", f"/v2/models/{NAME}", None),
        ("GET", f"/v2/models/{NAME}/versions/{VERSION}/ready", None),
        ("POST", INFER, infer_body(TITLES[:2], id="x")),
        ("POST", INFER, {"inputs": "nope"}),
        ("GET", "/v2/models/resnet", None),
    ]:
        r = httpx.request(method, base + path, json=body)
        check_answer(method, path, r.status_code, r.content)
