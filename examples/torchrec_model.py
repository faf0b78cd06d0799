"""A TorchRec DLRM whose tables are MEmCom-compressed 8x, sharded by DistributedModelParallel.

Runs on one CPU rank (gloo); under torchrun every rank runs the same lines.
"""

import torch
import torch.distributed as dist
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.models.dlrm import DLRM
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.keyed import KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

import compactrec.api as cr

if not dist.is_initialized():  # one process; torchrun would have set up the group
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)

tables = [
    EmbeddingBagConfig(name=f"t_{name}", embedding_dim=16, num_embeddings=rows, feature_names=[name])
    for name, rows in [("user", 100_000), ("item", 20_000), ("category", 50)]
]
emb = cr.compressed_embedding(tables, "memcom", ratio=8)  # or hash, qr, mixed_dim, cafe
print(f"embeddings: {cr.size_report(emb, tables)['compression_ratio']:.1f}x smaller than the full tables")

model = DLRM(embedding_bag_collection=emb, dense_in_features=4, dense_arch_layer_sizes=[32, 16],
             over_arch_layer_sizes=[32, 1])
_apply_optimizer_in_backward(RowWiseAdagrad, cr.table_parameters(emb), {"lr": 0.05})  # fused, in backward
model = DistributedModelParallel(model, device=torch.device("cpu"), sharders=cr.sharders(), plan=cr.sharding_plan(model))
cr.finish_sharding(model)  # CAFE splits its sketch over the ranks; a no-op for MEmCom
dense_optimizer = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(model.named_parameters())),
                                        lambda params: torch.optim.Adagrad(params, lr=0.02))

torch.manual_seed(0)
batch = 256
for step in range(5):
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item", "category"],
        values=torch.cat([torch.randint(0, 100_000, (batch,)), torch.randint(0, 20_000, (2 * batch,)),
                          torch.randint(0, 50, (batch,))]),
        lengths=torch.cat([torch.ones(batch), torch.full((batch,), 2), torch.ones(batch)]).int(),  # items: bags of 2
    )
    dense, labels = torch.rand(batch, 4), torch.randint(0, 2, (batch,)).float()
    logits = model(dense, sparse).squeeze(-1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    dense_optimizer.zero_grad()
    loss.backward()  # the tables update here (fused optimizer); the dense part below
    dense_optimizer.step()
    print(f"step {step}: loss {loss.item():.4f}")

dist.destroy_process_group()
