from peftbench.train import batch_order


def test_batch_order_is_deterministic_covers_each_example_once_and_groups_lengths():
    lengths = [(i * 37) % 101 + 5 for i in range(100)]
    batches = batch_order(lengths, 8, epoch=0, seed=3)
    assert batches == batch_order(lengths, 8, epoch=0, seed=3)
    assert batches != batch_order(lengths, 8, epoch=1, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(100))
    assert sum(len(b) < 8 for b in batches) == 1  # windows of 64 examples: 64 + 36, so one batch of 4

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    random_batches = [list(range(100))[i : i + 8] for i in range(0, 100, 8)]
    assert padding(batches) < 0.5 * padding(random_batches)
