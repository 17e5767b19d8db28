"""The peer: the minimal FastAPI + onnxruntime service a user would write instead of osr-serve,
for bench/perf_peer.py (same model.onnx, same client). No limits, no batching, no checks.

    OSR_PEER_MODEL=model_repository/cifar10-lite0/3 uvicorn --app-dir bench peer_service:app --workers 2
"""

import io
import json
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, UploadFile
from PIL import Image

MODEL_DIR = os.environ.get("OSR_PEER_MODEL", "model_repository/cifar10-lite0/3")
manifest = json.load(open(os.path.join(MODEL_DIR, "manifest.json")))
session = ort.InferenceSession(os.path.join(MODEL_DIR, "model.onnx"), providers=["CPUExecutionProvider"])
size, classes = manifest["image_size"], manifest["classes"]
app = FastAPI()


@app.post("/classify")
async def classify(file: UploadFile = File(...)):
    image = Image.open(io.BytesIO(await file.read())).convert("RGB").resize((size, size), Image.BILINEAR)
    logits, score, label, p_value = session.run(["logits", "score", "label", "p_value"],
                                                {"images": np.asarray(image)[None]})
    k = int(label[0])
    probabilities = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()
    return {"label": classes[k] if k >= 0 else "unknown", "score": float(score[0]), "p_value": float(p_value[0]),
            "probabilities": {c: float(p) for c, p in zip(classes, probabilities)}}
