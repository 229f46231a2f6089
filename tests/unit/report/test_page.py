"""The report page's pieces that need no run: readable names for the keys stages record.
(The page itself, rendered in Chromium, is tests/integration/report/test_page.py.)"""

from mitune_ray.report.page import label


def test_headers_are_words_not_keys():
    assert label("undecodable_skipped") == "Undecodable (skipped)"
    assert label("blip_vqa") == "BLIP-VQA" and label("samples_per_s") == "Samples/s"
    assert label("a_new_key") == "A new key"
