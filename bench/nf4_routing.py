"""Top-8 routing of the first 100 benchmark sentences through transformers + bitsandbytes nf4, the
Python lab's 4-bit setting (nf4, float16 compute), on the saved random model.
usage: python3 bench/nf4_routing.py MODEL_DIR WORK_DIR   -> WORK_DIR/route_nf4.json"""
import json, os, sys, time
import torch
from transformers import BitsAndBytesConfig, OlmoeForCausalLM
model_dir, work = sys.argv[1], sys.argv[2]
q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16, bnb_4bit_quant_type="nf4")
t = time.perf_counter()
model = OlmoeForCausalLM.from_pretrained(model_dir, quantization_config=q, device_map="cuda")
load_s = time.perf_counter() - t
store = []
def hook(mod, inp, out):
    logits = out[0] if isinstance(out, tuple) else out
    store.append(torch.topk(torch.softmax(logits.float(), -1), 8, -1).indices.cpu())
for n, m in model.named_modules():
    if n.endswith("mlp.gate"):
        m.register_forward_hook(hook)
sents = json.load(open(os.path.join(work, "sents.json")))[:100]
dump = []
with torch.no_grad():
    for s in sents:
        store.clear(); model(torch.tensor([s], device="cuda"))
        dump.append([x.tolist() for x in store])
json.dump(dump, open(os.path.join(work, "route_nf4.json"), "w"))
n4 = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
print("NF4", json.dumps({"load_s": load_s, "linear4bit_modules": n4, "memory_footprint_GiB": model.get_memory_footprint() / 2**30, "sentences": len(dump), "layers": len(dump[0]) if dump else 0,
                         "bitsandbytes": __import__("bitsandbytes").__version__}), flush=True)
