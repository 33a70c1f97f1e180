"""``model.verbalizer``: words given by class name or by position, refused when they miss a class, logged."""

import pytest

from flower_app.config.load import load_config
from flower_app.model.loading import tiny_tokenizer
from flower_app.tasks.lm import job_verbalizer, label_words

CLASSES = ("negative", "positive")  # a dataset's class names, sorted
LM = {"config": "test", "model.source": "random-gpt2", "model.head": "lm", "model.pooling": "last"}


@pytest.mark.parametrize(
    ("verbalizer", "expected"),
    [
        ("negative=bad,positive=good", ("bad", "good")),
        ("positive=good, negative=bad", ("bad", "good")),  # by name: the order does not matter
        ("bad,good", ("bad", "good")),  # by position: the i-th word is the i-th class's, as before
        ("", CLASSES),  # none: the class names themselves
    ],
)
def test_each_class_gets_its_word(verbalizer, expected):
    assert label_words(verbalizer, CLASSES) == expected


@pytest.mark.parametrize(
    ("verbalizer", "message"),
    [
        ("negativ=bad,positive=good", "model.verbalizer names class 'negativ' (did you mean 'negative'?)"),
        ("positive=good", "model.verbalizer gives no word for class 'negative'"),
        ("negative=bad,negative=awful,positive=good", "model.verbalizer gives class 'negative' two words"),
        ("negative=bad,good", "mixes class=word and bare words"),
        ("negative=,positive=good", "model.verbalizer gives class 'negative' an empty word"),
        ("bad,good,meh", "model.verbalizer has 3 words for 2 classes"),
    ],
)
def test_a_verbalizer_that_misses_a_class_is_refused_in_one_line(verbalizer, message):
    with pytest.raises(ValueError) as caught:
        label_words(verbalizer, CLASSES)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("verbalizer", ["negative=bad,positive=good", "bad,good"])
def test_the_class_to_word_mapping_is_logged(verbalizer, caplog):
    # Prepare
    tokenizer = tiny_tokenizer(512)
    config = load_config({**LM, "model.verbalizer": verbalizer})

    # Execute
    with caplog.at_level("INFO"):
        ids = job_verbalizer(tokenizer, config, CLASSES)

    # Assert
    vocab = tokenizer.get_vocab()
    assert ids == (vocab["bad"], vocab["good"])
    assert "model.verbalizer: negative -> 'bad', positive -> 'good'" in caplog.text


def test_class_names_in_another_order_by_position_are_warned_about(caplog):
    # Prepare: good/bad classes are sorted (bad, good); the words were written good,bad
    tokenizer = tiny_tokenizer(512)
    config = load_config({**LM, "model.verbalizer": "good,bad"})

    # Execute
    with caplog.at_level("INFO"):
        job_verbalizer(tokenizer, config, ("bad", "good"))

    # Assert: the mapping as given, and a hint to name the classes
    assert "model.verbalizer: bad -> 'good', good -> 'bad'" in caplog.text
    assert "bad=bad,good=good" in caplog.text
