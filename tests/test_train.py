from peftbench.train import batch_order, micro_batched_steps, micro_batches


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


def test_micro_batches_split_a_batch_evenly_within_the_token_budget():
    def sizes(lengths, budget):
        groups = micro_batches([([0] * n, None) for n in lengths], budget)
        assert [n for g in groups for n in map(lambda e: len(e[0]), g)] == lengths  # every example once, in order
        return [sum(len(ids) for ids, _ in g) for g in groups]

    assert sizes([1000] * 8, 0) == [8000]  # 0: the whole batch
    assert sizes([1000] * 8, 8000) == [8000]
    assert sizes([1000] * 8, 4096) == [4000, 4000]
    assert sizes([600] * 8, 4096) == [2400, 2400]  # as even as the examples allow, not 3,600 + 1,200
    assert sizes([1000] * 8, 2500) == [2000] * 4
    assert sizes([900, 300, 300, 300, 100, 100], 1000) == [900, 300, 800]  # three groups, none over 1,000
    assert sizes([3000, 200, 200], 1000) == [3000, 400]  # an example longer than the budget goes alone
    assert sizes([3000, 200, 200], 100) == [3000, 200, 200]


def test_micro_batched_steps_counts_the_batches_that_split():
    lengths = [100] * 12 + [900] * 4
    examples = [([0] * n, None) for n in lengths]
    training = {"epochs": 2, "batch_size": 4, "micro_batch_tokens": 1000}
    split = micro_batched_steps(examples, lengths, training, seed=0)
    expected = sum(sum(lengths[i] for i in batch) > 1000
                   for epoch in range(2) for batch in batch_order(lengths, 4, epoch, 0))
    assert split == expected > 0
    assert micro_batched_steps(examples, lengths, {**training, "micro_batch_tokens": 0}, seed=0) == 0
