"""The names of the files and folders locopack writes and reads, defined once.

The core packages write some of them (the adapter, the localization result, the sweep cache,
a merged checkpoint); :mod:`locopack.release.layout` adds the rules of a release folder
around all of them.  This module imports nothing, so anything may read it cheaply.
"""

#: what makes a folder a diffusers pipeline
PIPELINE_INDEX = "model_index.json"

RECIPE_FILE = "recipe.yaml"
LOCALIZATION_FILE = "localization.json"
LOCALIZATION_PLOT = "localization.png"
#: the sweep's cache of finished windows; it never leaves the machine
CACHE_DIR = "cache"
DELTA_FILE = "delta.safetensors"
EDIT_FILE = "edit.json"
NEURON_FILE = "neurons.safetensors"
ADAPTER_FILE = "pytorch_lora_weights.safetensors"
MANIFEST_FILE = "lora_manifest.json"
KOHYA_FILE = "lora_kohya.safetensors"
#: the folder of a release that holds its merged checkpoint, and the record inside it
MERGED_DIR = "merged"
MERGE_FILE = "locopack_merge.json"
ONNX_DIR = "onnx"
EVIDENCE_DIR = "evidence"
EVIDENCE_FILE = "evidence.json"
CARD_FILE = "README.md"
HISTORY_FILE = "history.jsonl"
#: the in-toto statement with the release's SLSA provenance, and the signature over every file
PROVENANCE_FILE = "provenance.intoto.json"
SIGNATURE_FILE = "release.sig"
