import sys, traceback, torch
sys.path.insert(0, "tests")
from conftest import Tiny
from tensorllm.eval import decoder, static_decode
t = Tiny()
m = t.model("llama").cuda()
import random
rng = random.Random(5)
prompts = [[rng.randrange(3, 128) for _ in range(k)] for k in [1, 40, 2, 17, 5, 33, 9, 4, 12]]
kw = dict(max_new_tokens=8, eos_ids=[], pad_id=1, batch_size=4, progress=False)
plain = decoder.greedy_generate(m, prompts, graphs=False, **kw)
print("plain ok", plain[:2])
dev = torch.device("cuda")
ids, mask, pos = decoder.left_pad(prompts[:4], 1, dev)
eos = torch.tensor([], dtype=torch.long, device=dev)
try:
    rows = static_decode.graph_greedy(m, ids, mask, pos, max_new_tokens=8, eos=eos, pad_id=1, min_new_tokens=1,
                                      params=decoder.forward_params(m), cache_arg=decoder.cache_argument(m))
    torch.cuda.synchronize()
    print("graph", rows[:2], "plain", plain[:2])
except Exception:
    traceback.print_exc()
