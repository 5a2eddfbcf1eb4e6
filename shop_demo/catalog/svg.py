"""Generated product pictures: a deterministic SVG per product, so the demo needs no image files.

The colour comes from the category's hue (a category looks like itself), the shape from the
product's role, and small variations from a stable checksum of the slug, so the same
product always gets the same picture on every machine and every run.
"""

import zlib

from django.utils.html import escape

SIZE = 240

# One shape per role, drawn centred in a 240×240 box.
ROLE_SHAPES = {
    "main": '<circle cx="120" cy="112" r="70" fill="{fill}"/>',
    "accessory": '<rect x="52" y="44" width="136" height="136" rx="26" fill="{fill}"/>',
    "consumable": '<path d="M120 36 C160 92 190 124 190 152 A70 70 0 0 1 50 152 C50 124 80 92 120 36 Z" fill="{fill}"/>',
    "refill": '<polygon points="120,40 196,176 44,176" fill="{fill}"/>',
}


def stable_number(text):
    """A checksum that, unlike ``hash()``, is the same in every process."""
    return zlib.crc32(text.encode("utf-8"))


def initials(name, letters=2):
    """The first letters of the first words of a name: 'Aurora Desk Lamp' -> 'AD'."""
    words = [word for word in name.split() if word[:1].isalnum()]
    return "".join(word[0] for word in words[:letters]).upper() or "?"


def product_svg(product):
    """The SVG document for one product, as text."""
    seed = stable_number(product.slug)
    hue = (product.category.hue + seed % 31 - 15) % 360
    background = f"hsl({hue}, 55%, {88 + seed % 7}%)"
    fill = f"hsl({hue}, {50 + seed % 25}%, {42 + (seed >> 5) % 12}%)"
    accent = f"hsl({(hue + 180) % 360}, 60%, 60%)"
    shape = ROLE_SHAPES.get(product.role, ROLE_SHAPES["main"]).format(fill=fill)
    dot_x, dot_y = 30 + (seed >> 9) % 180, 20 + (seed >> 17) % 40
    label = escape(product.name)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {SIZE} {SIZE}" '
        f'width="{SIZE}" height="{SIZE}" role="img" aria-label="{label}">'
        f"<title>{label}</title>"
        f'<rect width="{SIZE}" height="{SIZE}" fill="{background}"/>'
        f'<circle cx="{dot_x}" cy="{dot_y}" r="9" fill="{accent}" opacity="0.7"/>'
        f"{shape}"
        f'<text x="120" y="{134 if product.role != "refill" else 150}" text-anchor="middle" '
        f'font-family="system-ui, sans-serif" font-size="44" font-weight="700" fill="#fff">'
        f"{escape(initials(product.name))}</text>"
        f'<rect x="0" y="{SIZE - 8}" width="{SIZE}" height="8" fill="{fill}" opacity="0.5"/>'
        f"</svg>"
    )
