from tasks.sample.layout import build_messages


def test_default_is_one_user_turn_context_blank_line_query():
    assert build_messages("The report.", "What changed?") == [
        {"role": "user", "content": "The report.\n\nWhat changed?"}]


def test_template_keeps_braces_in_the_context_verbatim():
    context = 'config = {"a": {1, 2}} and {0} and {context} and {query}'
    messages = build_messages(context, "Why {x}?", "Read:\n<doc>{context}</doc>\nQ: {query}")
    assert messages == [{"role": "user",
                         "content": f"Read:\n<doc>{context}</doc>\nQ: Why {{x}}?"}]


def test_template_without_placeholders_is_used_as_is():
    assert build_messages("c", "q", "static {other}")[0]["content"] == "static {other}"
