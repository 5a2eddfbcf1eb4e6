"""Forms of the demo store: what a cart POST may say."""

from django import forms

MAX_QUANTITY = 99


class CartActionForm(forms.Form):
    """One change to the session cart: add, remove or set the quantity of a product."""

    ADD, REMOVE, UPDATE = "add", "remove", "update"

    action = forms.ChoiceField(choices=[(ADD, "Add"), (REMOVE, "Remove"), (UPDATE, "Update")])
    product = forms.IntegerField(min_value=1)
    quantity = forms.IntegerField(min_value=0, max_value=MAX_QUANTITY, required=False)

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("quantity") is None:
            # "Add" without a quantity adds one; "update" without one keeps nothing.
            cleaned["quantity"] = 1 if cleaned.get("action") == self.ADD else 0
        return cleaned


class AddToCartForm(forms.Form):
    """The quantity box on a product page; posts a CartActionForm with action=add."""

    quantity = forms.IntegerField(min_value=1, max_value=MAX_QUANTITY, initial=1)
