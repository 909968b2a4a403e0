"""Training throughput (img/s) of each architecture and input size on this CPU (random data, AdamW)."""
import sys
import time

import torch

from model.network import FractureNet

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
configs = [a.split("@") for a in (sys.argv[2:] or ["mobilenet_v3_large@224", "mobilenet_v3_large@320"])]
for arch, size in configs:
    size = int(size)
    m = FractureNet(arch).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    x = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.rand(32, 5)
    for i in range(6):
        if i == 2:
            t = time.time()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"{arch}@{size} threads={threads}: {4 * 32 / (time.time() - t):.1f} img/s", flush=True)
