from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    """Deleting a product keeps its events: no cascade, no foreign-key constraint.

    History is training data, reports and purchase records; the catalogue may drop an item
    at any time. Dropping the constraint touches no row.
    """

    dependencies = [
        ("recommender", "0005_drop_unused_api_trigger"),
        migrations.swappable_dependency(settings.RECOMMENDER_ITEM_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="event",
            name="item",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=models.deletion.DO_NOTHING,
                related_name="recommender_events",
                to=settings.RECOMMENDER_ITEM_MODEL,
            ),
        ),
    ]
