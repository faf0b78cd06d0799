"""The per-step fast paths of the compressed methods (issue 16): KJT regrouping, rows joined
as a view of TorchRec's lookup output, CAFE's pooled column groups, and table_wise on one rank.

The methods' outputs and gradients through these paths are compared with the fused kernels
in ``test_methods.py`` and with unsharded models in ``tests/distributed/test_dmp_parity.py``;
here each helper is checked on the cases those do not reach on one CPU process (a sharded
lookup's per-feature views, a KeyedTensor whose keys come back in another order)."""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from compactrec.embeddings.base import group_columns, join_rows, split_kjt, value_keys
from compactrec.sharding.planner import default_sharders, plan_model


def _kjt() -> KeyedJaggedTensor:
    # keys a, b, c; batch 3; multi-hot with an empty bag
    lengths = torch.tensor([1, 2, 0, 3, 1, 1, 0, 2, 1], dtype=torch.int32)
    values = torch.arange(int(lengths.sum())) * 10
    return KeyedJaggedTensor(keys=["a", "b", "c"], values=values, lengths=lengths)


def test_split_kjt_regroups_keys_in_the_given_order():
    kjt = _kjt()
    first, second = split_kjt(kjt, ["c", "a"], ["b"])
    want = kjt.to_dict()
    assert first.keys() == ["c", "a"] and second.keys() == ["b"]
    for part in (first, second):
        for key, jt in part.to_dict().items():
            assert torch.equal(jt.values(), want[key].values()), key
            assert torch.equal(jt.lengths(), want[key].lengths()), key
    only, none = split_kjt(kjt, ["a", "b", "c"], [])
    assert none is None and only.keys() == ["a", "b", "c"]


def test_value_keys_names_each_values_key():
    kjt = _kjt()
    per_key = [len(v.values()) for v in kjt.to_dict().values()]
    want = torch.repeat_interleave(torch.arange(3), torch.tensor(per_key))
    assert torch.equal(value_keys(kjt), want)


def test_join_rows_is_a_view_of_consecutive_pieces_and_carries_gradients():
    leaf = torch.randn(10, 3, requires_grad=True)
    looked = leaf * 2  # a lookup output (non-leaf), split per feature as TorchRec does
    parts = list(torch.split(looked, [2, 3, 5]))
    joined = join_rows(parts)
    assert joined.data_ptr() == looked.data_ptr() and joined.shape == (10, 3)
    w = torch.randn(10, 3)
    (joined * w).sum().backward()
    torch.testing.assert_close(leaf.grad, 2 * w)
    tail = join_rows(parts[1:])  # a run that starts inside the lookup output
    assert tail.data_ptr() == looked[2:].data_ptr() and torch.equal(tail, looked[2:])
    # Out of order or with a gap: a copy with the right values.
    shuffled = [parts[2], parts[0]]
    torch.testing.assert_close(join_rows(shuffled), torch.cat(shuffled))
    assert join_rows(shuffled).data_ptr() != looked.data_ptr()
    gap = [parts[0], parts[2]]
    torch.testing.assert_close(join_rows(gap), torch.cat(gap))


def test_column_groups_split_once_or_gather_by_key():
    values = torch.arange(2 * 12, dtype=torch.float32).view(2, 12).requires_grad_()
    kt = KeyedTensor(keys=["x", "h0", "h1", "y"], length_per_key=[3, 3, 3, 3], values=values)
    a, b, c = group_columns(kt, [["x"], ["h0", "h1"], ["y"]])
    assert b.data_ptr() == values[:, 3:].data_ptr() and torch.equal(b, values[:, 3:9])
    assert torch.equal(a, values[:, :3]) and torch.equal(c, values[:, 9:])
    w = torch.randn(2, 6)
    (b * w).sum().backward()
    torch.testing.assert_close(values.grad, torch.cat([torch.zeros(2, 3), w, torch.zeros(2, 3)], dim=1))
    # groups that are runs of the KeyedTensor in another group order (DMP's output order):
    # still views of one split
    y, hs, x = group_columns(kt, [["y"], ["h0", "h1"], ["x"]])
    assert hs.data_ptr() == values[:, 3:].data_ptr() and y.data_ptr() == values[:, 9:].data_ptr()
    assert torch.equal(x, values[:, :3]) and torch.equal(hs, values[:, 3:9]) and torch.equal(y, values[:, 9:])
    # keys in another order inside a group: gathered by key
    got = group_columns(kt, [["y", "x"], ["h1"], [], ["h0"]])
    torch.testing.assert_close(got[0], torch.cat([values[:, 9:12], values[:, 0:3]], dim=1))
    torch.testing.assert_close(got[1], values[:, 6:9])
    assert got[2].shape == (2, 0)
    torch.testing.assert_close(got[3], values[:, 3:6])


class _Tables(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name=f"t{i}", embedding_dim=8, num_embeddings=1000, feature_names=[f"f{i}"])
            for i in range(3)
        ], device=torch.device("meta"))


def _types(plan) -> set:
    return {s.sharding_type for module_plan in plan.plan.values() for s in module_plan.values()}


def test_one_rank_plans_table_wise_unless_only_row_wise_is_asked():
    model = _Tables()
    both = plan_model(model, 1, "cpu", ["table_wise", "row_wise"], {}, default_sharders(), collective=False)
    assert _types(both) == {"table_wise"}
    rw = plan_model(model, 1, "cpu", ["row_wise"], {}, default_sharders(), collective=False)
    assert _types(rw) == {"row_wise"}


def test_cafe_hot_table_is_table_wise_on_one_rank_and_row_wise_on_several():
    """One rank: the hot table joins the other tables' TBE (row_wise gave it a TBE, input
    dist and bucketize of its own); several ranks: row_wise, its sketch spread over all."""
    from compactrec.embeddings.cafe import HOT_TABLE
    from compactrec.sharding.planner import table_constraints

    class _Cafe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ebc = EmbeddingBagCollection(tables=[
                EmbeddingBagConfig(name=n, embedding_dim=8, num_embeddings=100, feature_names=[f"{n}_f"])
                for n in (HOT_TABLE, "cafe_hash_a_0")
            ], device=torch.device("meta"))

    for types in (["row_wise"], ["table_wise", "row_wise"]):
        assert table_constraints(_Cafe(), types, {}, world_size=1)[HOT_TABLE].sharding_types == ["table_wise"]
        assert table_constraints(_Cafe(), types, {}, world_size=2)[HOT_TABLE].sharding_types == ["row_wise"]
    asked = table_constraints(_Cafe(), ["table_wise"], {HOT_TABLE: ["row_wise"]}, world_size=1)
    assert asked[HOT_TABLE].sharding_types == ["row_wise"]  # asked by name: kept
