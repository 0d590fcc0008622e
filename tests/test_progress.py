"""The progress bar reports counts, percentages and byte sizes, and stays quiet when asked."""
import io

from torchcaffe.progress import Progress, progress


def test_non_terminal_stream_gets_a_line_per_tenth():
    out = io.StringIO()
    with Progress(50, 'score', stream=out) as bar:
        for _ in range(50):
            bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11  # 0% .. 100%, one line per decile reached
    assert lines[-1].startswith('score [####################] 100% 50/50')


def test_byte_counts_are_shown_in_binary_units():
    bar = Progress(3 * 2 ** 20, 'download', unit='B', stream=False, initial=2 ** 20)
    assert '1.0 MiB/3.0 MiB' in bar.line()
    assert ' 33%' in bar.line()


def test_progress_yields_every_item_and_draws_nothing_when_disabled():
    assert list(progress(iter('abc'), total=3, stream=False)) == ['a', 'b', 'c']
