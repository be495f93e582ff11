from nhr.ids import derive_seed, stable_id, unit_interval


def test_ids_are_deterministic_and_separate_their_parts():
    assert stable_id(1, "a") == stable_id(1, "a")
    assert stable_id("ab", "c") != stable_id("a", "bc")
    assert len(stable_id("x")) == 16


def test_seeds_fit_31_bits_and_uniform_draws_are_in_unit_interval():
    seeds = [derive_seed(0, "s", i) for i in range(1000)]
    assert all(0 <= s < 2**31 for s in seeds)
    assert len(set(seeds)) == 1000
    draws = [unit_interval(0, i) for i in range(2000)]
    assert all(0 <= d < 1 for d in draws)
    assert 0.45 < sum(draws) / len(draws) < 0.55
