"""The admin's SVG charts: valid, accessible, and showing the data they were given."""

import xml.etree.ElementTree as ET

import pytest

from recommender import charts

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg):
    root = ET.fromstring(str(svg))
    assert root.tag == f"{SVG}svg"
    return root


def point_titles(root, tag):
    return [el.find(f"{SVG}title").text for el in root.iter(f"{SVG}{tag}")]


@pytest.mark.parametrize(
    "low, high, expected",
    [
        (0, 1, [0.0, 0.25, 0.5, 0.75, 1.0]),
        (0.013, 0.087, [0.0, 0.02, 0.04, 0.06, 0.08, 0.1]),
        (0, 1234, [0, 500, 1000, 1500]),
        (-3, 7, [-5.0, -2.5, 0.0, 2.5, 5.0, 7.5]),
    ],
)
def test_nice_ticks_are_round_and_cover_the_range(low, high, expected):
    assert charts.nice_ticks(low, high) == expected


def test_nice_ticks_survive_a_flat_or_missing_range():
    flat = charts.nice_ticks(5, 5)
    assert flat[0] <= 5 <= flat[-1] and len(flat) > 1
    assert charts.nice_ticks(None, None) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_line_chart_is_accessible_svg_with_every_point_labelled():
    root = parse(
        charts.line_chart(
            [1, 2, 3, 4],
            [("loss", [3.5, 2.25, None, 1.5]), ("val NDCG@10", [0.1, 0.2, 0.3, 0.35])],
            title="Loss per epoch",
            x_title="epoch",
            y_title="loss",
        )
    )
    assert root.get("role") == "img"
    title_id, desc_id = root.get("aria-labelledby").split()
    assert (
        root.find(f"{SVG}title").get("id") == title_id
        and root.find(f"{SVG}title").text == "Loss per epoch"
    )
    assert root.find(f"{SVG}desc").get("id") == desc_id
    titles = point_titles(root, "circle")
    # The gap (None) has no point; every other value is there with its series and label.
    assert titles == [
        "loss, 1: 3.5",
        "loss, 2: 2.25",
        "loss, 4: 1.5",
        "val NDCG@10, 1: 0.1",
        "val NDCG@10, 2: 0.2",
        "val NDCG@10, 3: 0.3",
        "val NDCG@10, 4: 0.35",
    ]
    values = [float(c.get("data-value")) for c in root.iter(f"{SVG}circle")]
    assert values[:3] == [3.5, 2.25, 1.5]
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {"epoch", "loss", "Loss per epoch", "1", "4"} <= texts
    # Two series get a legend; the gap splits the loss line into a path before it only.
    assert {"loss", "val NDCG@10"} <= texts
    assert len(root.findall(f".//{SVG}g[@data-series='loss']/{SVG}path")) == 1


def test_higher_values_are_drawn_higher():
    root = parse(charts.line_chart(["a", "b"], [("s", [1.0, 2.0])], title="t"))
    low, high = (float(c.get("cy")) for c in root.iter(f"{SVG}circle"))
    assert high < low  # SVG y grows downwards


def test_text_is_escaped():
    root = parse(charts.bar_chart(["<b>&"], [("x<y", [1])], title="A & B <script>"))
    assert root.find(f"{SVG}title").text == "A & B <script>"
    assert "<script>" not in str(charts.bar_chart(["a"], [("s", [1])], title="<script>"))


def test_stacked_bars_add_up_and_grouped_bars_sit_side_by_side():
    labels = ["Mon", "Tue"]
    series = [("view", [10, 20]), ("purchase", [5, None])]
    stacked = parse(charts.bar_chart(labels, series, title="Events", stacked=True))
    rects = list(stacked.iter(f"{SVG}rect"))
    bars = [r for r in rects if r.get("class") == "bar"]
    assert [b.find(f"{SVG}title").text for b in bars] == [
        "view, Mon: 10",
        "view, Tue: 20",
        "purchase, Mon: 5",
    ]
    monday_view, _, monday_purchase = bars
    # The purchase bar sits on top of the view bar in the same column.
    assert monday_view.get("x") == monday_purchase.get("x")
    assert float(monday_purchase.get("y")) + float(monday_purchase.get("height")) == pytest.approx(
        float(monday_view.get("y")), abs=0.2
    )
    grouped = parse(charts.bar_chart(labels, series, title="Events"))
    bars = [r for r in grouped.iter(f"{SVG}rect") if r.get("class") == "bar"]
    assert bars[0].get("x") != bars[2].get("x")
    assert float(bars[1].get("height")) == pytest.approx(2 * float(bars[0].get("height")), rel=0.02)


def test_empty_charts_say_so():
    root = parse(charts.line_chart([], [], title="Loss", empty_message="No epochs recorded."))
    assert "No epochs recorded." in {t.text for t in root.iter(f"{SVG}text")}
    root = parse(charts.bar_chart(["a"], [("s", [None])], title="Bars"))
    assert not [r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]


def test_each_chart_has_its_own_ids():
    one = parse(charts.line_chart([1], [("s", [1])], title="a"))
    two = parse(charts.line_chart([1], [("s", [1])], title="a"))
    assert one.get("aria-labelledby") != two.get("aria-labelledby")


def test_format_number():
    assert charts.format_number(0.04123) == "0.0412"
    assert charts.format_number(12) == "12"
    assert charts.format_number(1500) == "1,500"
    assert charts.format_number(25_000) == "25k"
    assert charts.format_number(None) == "—"


def test_intervals_are_drawn_as_bands_and_named_in_the_points_titles():
    svg = charts.line_chart(
        ["d1", "d2", "d3", "d4"],
        [("A", [0.1, 0.2, None, 0.4]), ("B", [0.3, 0.3, 0.3, 0.3])],
        bands={"A": ([0.05, 0.1, None, 0.2], [0.2, 0.3, None, 0.9]), "B": ([0.2] * 4, [0.4] * 4)},
        reference=0.0,
        title="With intervals",
    )
    root = parse(svg)
    bands = {g.get("data-series"): g for g in root.iter(f"{SVG}g") if g.get("class") == "band"}
    # A: a polygon over d1-d2 and a bar at d4 (its gap splits the band); B: one polygon.
    assert len(list(bands["A"].iter(f"{SVG}path"))) == 1
    assert len(list(bands["A"].iter(f"{SVG}line"))) == 1
    assert len(list(bands["B"].iter(f"{SVG}path"))) == 1
    assert "A, d4: 0.4 [0.2, 0.9]" in point_titles(root, "circle")
    # The axis covers the bands' ends and the reference line, not only the values.
    ticks = [float(t.text) for t in root.iter(f"{SVG}text") if t.get("class") == "y-tick"]
    assert min(ticks) <= 0.0 and max(ticks) >= 0.9
    assert any(line.get("class") == "reference" for line in root.iter(f"{SVG}line"))
