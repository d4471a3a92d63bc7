"""The serving engine in-process on a tiny GPT: continuous batching (rows joining mid-decode with their own settings,
prompts read in chunks, cancelled rows freeing their slots, never more rows than slots), prefix reuse, and batched
calls, every completion checked token for token against what ``lmkit generate`` (Generator.generate_ids) gives for
the same request alone."""

import asyncio

import pytest
import torch

from lmkit.checkpoint import read_checkpoint
from lmkit.errors import UserError
from lmkit.generation.generator import Generator
from lmkit.generation.sampling import prompt_key, row_generators
from lmkit.generation.settings import SamplingSettings
from lmkit.serving.engine import BATCH, CALL, COMPLETE, Batched, Engine, scheduler_for
from lmkit.serving.jobs import Job, Row
from lmkit.serving.prefix import PrefixCache
from lmkit.serving.scheduler import Scheduler

GREEDY = SamplingSettings(max_new_tokens=24, temperature=0)
TOP_K = SamplingSettings(max_new_tokens=20, temperature=0.8, top_k=20, seed=3)
NUCLEUS = SamplingSettings(max_new_tokens=16, temperature=1.2, top_p=0.9, min_p=0.05, repetition_penalty=1.3, seed=5)
STOPPED = SamplingSettings(max_new_tokens=30, temperature=0.9, stop=("e",), seed=1)


@pytest.fixture(scope="module")
def generator(gpt):
    return Generator(read_checkpoint(gpt))


def request(generator, text: str, settings: SamplingSettings, n: int = 1) -> Job:
    """A completion job as the server makes it: the prompt's ids and one generator per sample."""
    ids = generator.encode_prompt(text, "prompt")
    generators = row_generators(settings.seed, [(prompt_key(text), k) for k in range(n)])
    return Job(COMPLETE, [Row(ids, each) for each in generators], settings)


def alone(generator, text: str, settings: SamplingSettings, n: int = 1) -> list[tuple[list[int], str]]:
    """What `lmkit generate` gives for the request alone: each sample's new ids and text."""
    replies = generator.generate_ids([generator.encode_prompt(text, "prompt")] * n, [text] * n, settings,
                                     names=["prompt"] * n)
    return [(reply.ids, reply.text) for reply in replies]


def served(job: Job) -> list[tuple[list[int], str]]:
    return [(row.new_ids, row.text) for row in job.payload]


def run_out(scheduler: Scheduler, limit: int = 500) -> int:
    steps = 0
    while scheduler.busy:
        scheduler.step()
        steps += 1
        assert steps < limit, "the batch never emptied"
    return steps


def test_rows_join_mid_decode_with_their_own_settings_and_equal_generate_alone(generator):
    scheduler = Scheduler(generator, slots=4, prefill_chunk=256, prefix_tokens=0)
    cases = [("The for statement", GREEDY), ("A class is a thing that", TOP_K), ("Modules are " * 6, NUCLEUS),
             ("An exception is raised when", STOPPED)]
    jobs, mixed = [], 0
    for text, settings in cases:
        jobs.append(request(generator, text, settings))
        scheduler.add(jobs[-1])
        for _ in range(3):
            scheduler.step()
            mixed = max(mixed, len({id(row.settings) for row in scheduler.rows if row.next_token is not None}))
    assert 0 < len(jobs[0].payload[0].new_ids) < GREEDY.max_new_tokens  # the others joined while it decoded
    run_out(scheduler)
    assert mixed >= 3  # rows of three different settings decoded in one step
    for job, (text, settings) in zip(jobs, cases, strict=True):
        assert served(job) == alone(generator, text, settings), text
    assert jobs[3].payload[0].finish == "stop" and "e" not in jobs[3].payload[0].text


def test_n_samples_of_a_prompt_equal_generates_copies(generator):
    scheduler = Scheduler(generator, slots=4, prefill_chunk=256, prefix_tokens=0)
    job = request(generator, "Iterators", TOP_K, n=3)
    scheduler.add(job)
    run_out(scheduler)
    samples = served(job)
    assert samples == alone(generator, "Iterators", TOP_K, n=3) and len({text for _, text in samples}) > 1


def test_a_prompt_longer_than_the_chunk_is_read_over_steps_while_the_others_decode(generator):
    chunk, settings = 8, SamplingSettings(max_new_tokens=40, temperature=0)
    scheduler = Scheduler(generator, slots=4, prefill_chunk=chunk, prefix_tokens=0)
    short, long_text = request(generator, "Dicts", settings), "The with statement opens a file. " * 2
    scheduler.add(short)
    while not short.payload[0].new_ids:
        scheduler.step()
    late = request(generator, long_text, TOP_K)
    scheduler.add(late)
    prompt = len(late.payload[0].ids)
    assert prompt > 3 * chunk
    reading_steps = 0
    while not late.payload[0].new_ids:
        before = len(short.payload[0].new_ids)
        scheduler.step()
        reading_steps += 1
        assert len(short.payload[0].new_ids) == before + 1  # one token a step, the long prompt read beside it
    assert reading_steps == -(-prompt // chunk)  # the prompt took ceil(tokens / chunk) steps
    run_out(scheduler)
    assert served(short) == alone(generator, "Dicts", settings)
    assert served(late) == alone(generator, long_text, TOP_K)


def test_a_cancelled_request_frees_its_slot_at_the_next_step(generator):
    scheduler = Scheduler(generator, slots=2, prefill_chunk=256, prefix_tokens=0)
    leaving, staying = request(generator, "Classes are", GREEDY), request(generator, "A module is", TOP_K)
    scheduler.add(leaving)
    scheduler.add(staying)
    for _ in range(3):
        scheduler.step()
    assert len(scheduler.rows) == 2 and scheduler.slots - len(scheduler.rows) == 0
    leaving.cancelled = True  # what the HTTP side sets when the client goes away or times out
    scheduler.step()
    assert [row.job for row in scheduler.rows] == [staying]
    assert scheduler.slots - len(scheduler.rows) == 1 and scheduler.cache.lengths[1] == 0
    assert len(leaving.payload[0].new_ids) == 3  # it took no token after it was cancelled
    run_out(scheduler)
    assert served(staying) == alone(generator, "A module is", TOP_K)
    assert scheduler.cache.lengths == [0, 0]


def test_a_client_that_goes_away_frees_its_slot_in_the_running_engine(generator):
    engine = Engine(generator, max_batch=2, prefix_cache_tokens=0)
    engine.scheduler.stops = frozenset()  # no end-of-text: the request decodes until it is cancelled
    long = SamplingSettings(max_new_tokens=100, temperature=0)

    async def main():
        engine.start()
        try:
            job_rows = engine.rows([generator.encode_prompt("x", "prompt")], ["x"], 1, 0)
            task = asyncio.ensure_future(engine.submit(COMPLETE, job_rows, long))
            while not job_rows[0].new_ids:
                await asyncio.sleep(0.001)
            assert engine.running == 1
            task.cancel()  # what streaming's relay does when the client disconnects
            for _ in range(1000):
                if engine.running == 0:
                    break
                await asyncio.sleep(0.002)
            assert engine.running == 0 and engine.slots - engine.running == 2
            assert len(job_rows[0].new_ids) < long.max_new_tokens
            with pytest.raises(asyncio.TimeoutError):  # a timeout cancels the same way
                await engine.submit(COMPLETE, engine.rows([generator.encode_prompt("y", "prompt")], ["y"], 1, 0),
                                    long, timeout=0.02)
            for _ in range(1000):
                if engine.running == 0:
                    break
                await asyncio.sleep(0.002)
            assert engine.running == 0
            rows = await engine.submit(COMPLETE, engine.rows([generator.encode_prompt("z", "prompt")], ["z"], 1, 0),
                                       SamplingSettings(max_new_tokens=5, temperature=0))
            assert len(rows[0].new_ids) == 5 and engine.ready
        finally:
            engine.stop()

    asyncio.run(main())


def test_the_batch_never_holds_more_rows_than_its_slots(generator):
    scheduler = Scheduler(generator, slots=2, prefill_chunk=256, prefix_tokens=0)
    cases = [("The for statement", GREEDY, 1), ("Iterators", TOP_K, 2), ("A class is", NUCLEUS, 1),
             ("Modules are", STOPPED, 1)]
    jobs = []
    for text, settings, n in cases:
        jobs.append(request(generator, text, settings, n))
        scheduler.add(jobs[-1])
    held = []
    while scheduler.busy:
        scheduler.step()
        held.append(len(scheduler.rows))
        assert scheduler.waiting_jobs >= 0
    assert max(held) == 2
    for job, (text, settings, n) in zip(jobs, cases, strict=True):
        assert served(job) == alone(generator, text, settings, n)


SYSTEM = "You answer questions about Python in one short sentence, with an example. "


def test_a_prefix_computed_for_one_request_is_reused_with_the_same_tokens(generator):
    scheduler = Scheduler(generator, slots=4, prefill_chunk=256, prefix_tokens=1024)
    questions = [("What is a class?", GREEDY), ("What is a module?", TOP_K), ("What is a class?", GREEDY)]
    hits = []
    for question, settings in questions:
        job = request(generator, SYSTEM + question, settings)
        scheduler.add(job)
        run_out(scheduler)
        assert served(job) == alone(generator, SYSTEM + question, settings), question
        hits.append(scheduler.prefix.hits)
    system_blocks = len(generator.encode_prompt(SYSTEM, "system")) // 16
    assert system_blocks >= 2 and hits[0] == 0
    assert hits[1] >= system_blocks * 16  # the second question reused at least the system prompt's blocks
    prompt = len(generator.encode_prompt(SYSTEM + "What is a class?", "prompt"))
    assert hits[2] - hits[1] == (prompt - 1) // 16 * 16  # the repeated prompt: all its whole blocks
    assert scheduler.prefix.lookups == sum((len(generator.encode_prompt(SYSTEM + q, "p")) - 1) // 16 * 16
                                           for q, _ in questions)
    # Rows sharing the prefix in one batch, joining while others decode: still the same tokens.
    jobs = [request(generator, SYSTEM + q, s) for q, s in (("Why?", NUCLEUS), ("How?", GREEDY), ("When?", TOP_K))]
    for job in jobs:
        scheduler.add(job)
        scheduler.step()
    run_out(scheduler)
    for job, (question, settings) in zip(jobs, (("Why?", NUCLEUS), ("How?", GREEDY), ("When?", TOP_K))):
        assert served(job) == alone(generator, SYSTEM + question, settings)


def test_the_prefix_cache_keeps_its_bound_and_forgets_deep_blocks_first():
    cache = PrefixCache(capacity=64, block=16)
    first, second = list(range(100, 149)), list(range(200, 249))  # 49 tokens: three reusable blocks each
    a, b = cache.digests(first), cache.digests(second)
    assert len(a) == 3 and len(cache.digests(first[:48])) == 2  # a block ending at the prompt's end is not one
    assert cache.digests(first[:16] + second[16:])[0] == a[0] != cache.digests(second[:16] + first[16:])[0]
    assert cache.digests(first[:16] + second[16:])[1] != b[1]  # a block's key depends on every token before it
    cache.store(a, lambda i: torch.full((1,), i))
    assert cache.tokens == 48
    cache.store(b, lambda i: torch.full((1,), 10 + i))
    assert cache.tokens == 64  # the bound: the least recently used blocks went, the first chain's deepest first
    assert [int(t) for t in cache.lookup(b)] == [10, 11, 12]
    assert [int(t) for t in cache.lookup(a)] == [0]  # its root stayed; a lookup stops at the first missing block
    assert (cache.hits, cache.lookups) == (64, 96)
    off = PrefixCache(capacity=0)
    off.store(a, lambda i: torch.zeros(1))
    assert off.tokens == 0 and off.lookup(a) == []


def test_the_scheduler_keeps_the_prefix_cache_within_its_bound(generator):
    scheduler = Scheduler(generator, slots=2, prefill_chunk=256, prefix_tokens=32)
    for index in range(4):
        scheduler.add(request(generator, f"Prompt number {index} is about lists and tuples and sets " * 2, GREEDY))
        run_out(scheduler)
        assert 0 < scheduler.prefix.tokens <= 32


def test_batched_calls_of_one_kind_run_together_and_an_error_stays_with_its_request():
    engine = Engine(max_batch=8)
    calls = []

    def double(items):
        calls.append(list(items))
        if "bad" in items:
            raise UserError("item: bad")
        return [item * 2 for item in items]

    async def main():
        engine.start()
        try:
            busy = asyncio.ensure_future(engine.submit(CALL, lambda: __import__("time").sleep(0.2)))
            await asyncio.sleep(0.05)  # the worker is busy: the next jobs wait in the queue together
            jobs = [engine.submit(BATCH, Batched("double", items, double)) for items in ([1, 2], [3], [4])]
            other = engine.submit(BATCH, Batched("other", [5], double))
            results = await asyncio.gather(*jobs, other)
            await busy
            assert results == [[2, 4], [6], [8], [10]]
            assert calls == [[1, 2, 3, 4], [5]]  # one call for the three jobs of one kind
            calls.clear()
            busy = asyncio.ensure_future(engine.submit(CALL, lambda: __import__("time").sleep(0.2)))
            await asyncio.sleep(0.05)
            jobs = [engine.submit(BATCH, Batched("double", items, double)) for items in ([1], ["bad"], [2])]
            results = await asyncio.gather(*jobs, return_exceptions=True)
            await busy
            assert results[0] == [2] and results[2] == [4] and isinstance(results[1], UserError)
            assert calls[0] == [1, "bad", 2] and len(calls) == 4  # merged, failed, then each alone
        finally:
            engine.stop()

    asyncio.run(main())


def test_concurrent_requests_through_the_running_engine_equal_generate(generator):
    engine = Engine(generator, max_batch=4, prefill_chunk=8, prefix_cache_tokens=256)
    cases = [("The for statement", GREEDY), ("A class is a thing that", TOP_K), (SYSTEM + "Why?", NUCLEUS),
             (SYSTEM + "How?", STOPPED), ("Iterators", GREEDY)]

    async def main():
        engine.start()
        try:
            submitted = [engine.submit(COMPLETE, engine.rows([generator.encode_prompt(text, "p")], [text], 1,
                                                             settings.seed), settings) for text, settings in cases]
            return await asyncio.gather(*submitted)
        finally:
            engine.stop()

    results = asyncio.run(main())
    for rows, (text, settings) in zip(results, cases, strict=True):
        assert [(row.new_ids, row.text) for row in rows] == alone(generator, text, settings)
    assert engine.pending == 0 and engine.running == 0


def test_an_lstm_keeps_dynamic_batching():
    assert scheduler_for("auto", "gpt") == "continuous" and scheduler_for("dynamic", "gpt") == "dynamic"
    assert scheduler_for("auto", "lstm") == "dynamic"
    with pytest.raises(UserError, match="--scheduler continuous: an LSTM"):
        scheduler_for("continuous", "lstm")


def test_the_warm_up_runs_every_kind_of_step_and_leaves_the_engine_as_it_was(generator):
    scheduler = Scheduler(generator, slots=8, prefill_chunk=256, prefix_tokens=64)
    stops = scheduler.stops
    scheduler.warm_up()  # five rows (the cache's buffers start with four slots), prompts read a token a step
    assert not scheduler.busy and scheduler.cache.lengths == [0] * 8 and scheduler.waiting_jobs == 0
    assert scheduler.stops == stops and scheduler.prefill_chunk == 256 and scheduler.prefix.capacity == 64
    assert scheduler.prefix.tokens == 0 and scheduler.prefix.lookups == 0
    job = request(generator, "The for statement", GREEDY)
    scheduler.add(job)
    run_out(scheduler)
    assert served(job) == alone(generator, "The for statement", GREEDY)


def test_bad_scheduler_flags_are_named_together():
    from lmkit.config import resolve
    from lmkit.errors import ConfigError
    from lmkit.serving.config import ServeConfig

    assert resolve(ServeConfig, {}, {"checkpoint": "run", "prefix_cache_tokens": 0}).prefill_chunk == 256
    with pytest.raises(ConfigError) as info:
        resolve(ServeConfig, {}, {"checkpoint": "run", "prefill_chunk": 0, "prefix_cache_tokens": -1,
                                  "scheduler": "eager"})
    text = str(info.value)
    assert "--prefill-chunk: must be at least 1" in text and "--prefix-cache-tokens: must be 0 (off)" in text
    assert "--scheduler" in text
