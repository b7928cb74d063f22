"""UTF-8-safe detokenization and stop-string hold-back."""
from modules.textstream import ChoiceText, IncrementalDetokenizer, StopMatcher

TEXTS = ["café naïve über 東京 こんにちは 🙂🔥✨", "Привет мир — “quotes” …", "plain ascii text 42"]


def test_detokenizer_never_emits_replacement_char(llama):
    for text in TEXTS:
        ids = llama.encode(text)
        detok = IncrementalDetokenizer(lambda t: llama.decode(t))
        pieces = [detok.feed(i) for i in ids] + [detok.flush()]
        assert all("\ufffd" not in p for p in pieces)
        assert "".join(pieces) == llama.decode(ids) == text


def test_byte_level_tokens_split_multibyte_chars(llama):
    # The test relies on at least one character spanning several tokens; check that it really does.
    ids = llama.encode("🙂")
    assert len(ids) > 1 and "\ufffd" in llama.decode(ids[:1])


def test_stop_matcher_holds_partial_and_cuts_at_stop():
    m = StopMatcher(["</s>", "STOP"])
    assert m.feed("Hel") == ("Hel", False)
    assert m.feed("lo <") == ("lo ", False)
    assert m.feed("/") == ("", False)
    assert m.feed("s> more") == ("", True)


def test_stop_matcher_releases_false_alarm():
    m = StopMatcher(["ab"])
    assert m.feed("xa") == ("x", False)
    assert m.feed("c") == ("ac", False)
    assert m.flush() == ""


def test_stop_matcher_earliest_stop_wins():
    m = StopMatcher(["world", "lo w"])
    assert m.feed("hello world") == ("hel", True)


def test_stop_matcher_flush_returns_held_text():
    m = StopMatcher(["END"])
    assert m.feed("the EN") == ("the ", False)
    assert m.flush() == "EN"


def test_choice_text_releases_tokens_with_their_text(llama):
    text = "café 🙂 ok"
    ids = llama.encode(text)
    choice = ChoiceText(IncrementalDetokenizer(lambda t: llama.decode(t)), StopMatcher([]))
    released, out = [], []
    for i in ids:
        piece, items, stopped = choice.push(i, i, True)
        assert not stopped
        out.append(piece)
        released += items
    piece, items, _ = choice.finish(True)
    out.append(piece)
    released += items
    assert "".join(out) == text and released == ids


def test_choice_text_drops_stop_tokens(llama):
    ids = llama.encode("say hello STOP world")
    choice = ChoiceText(IncrementalDetokenizer(lambda t: llama.decode(t)), StopMatcher(["STOP"]))
    out, released = "", []
    for i in ids:
        piece, items, stopped = choice.push(i, i, True)
        out += piece
        released += items
        if stopped:
            break
    assert stopped and out == "say hello "
    assert llama.decode(released).startswith("say hello") and "STOP" not in llama.decode(released)


def test_choice_text_trims_leading_spaces_only_at_the_start(llama):
    """Chat-mode replies drop the space after "Bot:", in whatever tokens it arrives; later spaces stay."""
    ids = llama.encode("   Hello  there")
    for trim, want in ((True, "Hello  there"), (False, "   Hello  there")):
        choice = ChoiceText(IncrementalDetokenizer(lambda t: llama.decode(t)), StopMatcher(["STOP"]), trim_start=trim)
        pushed = [choice.push(i, i, True) for i in ids]
        text, released, stopped = choice.finish(True)
        assert "".join(p[0] for p in pushed) + text == want and not stopped
        assert [i for p in pushed for i in p[1]] + released == ids  # every token still goes out
