"""Forget one shopper (a privacy request): their events and cached recommendations."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from recommender import privacy


class Command(BaseCommand):
    help = (
        "Delete every event of one shopper and their cached recommendations, and print what "
        "was deleted. Name the shopper by USERNAME, --user-id N or --session KEY (an anonymous "
        "shopper's key; every event recorded under it goes, even ones later attached to a user). "
        "Model artifacts hold only item ids, so the next trained version knows nothing of them. "
        "The admin's Events > Forget a shopper page does the same."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", nargs="?", help="The user's username.")
        parser.add_argument("--user-id", type=int, help="The user's primary key.")
        parser.add_argument("--session", help="An anonymous shopper's session key.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Only print what would be deleted."
        )

    def handle(self, *args, username, user_id, session, dry_run, **options):
        given = [v for v in (username, user_id, session) if v not in (None, "")]
        if len(given) != 1:
            raise CommandError("Name exactly one shopper: USERNAME, --user-id N or --session KEY.")
        user, session_key, who = None, "", ""
        if session is not None:
            session_key, who = session, f"anonymous session {session}"
        else:
            User = get_user_model()
            lookup = {"pk": user_id} if user_id is not None else {User.USERNAME_FIELD: username}
            user = User._default_manager.filter(**lookup).first()
            if user is None:
                raise CommandError(
                    f"No user with {', '.join(f'{k}={v!r}' for k, v in lookup.items())}."
                )
            who = f"user {user} (id {user.pk})"
        if dry_run:
            preview = privacy.preview_forget(user=user, session_key=session_key)
            self.stdout.write(f"Would delete {preview.describe()} of {who}.")
            return
        result = privacy.forget_shopper(user=user, session_key=session_key)
        self.stdout.write(
            self.style.SUCCESS(
                f"Forgot {who}: deleted {result.describe()}; cleared cached recommendations"
                + (
                    f" (also of {len(result.sessions)} session key(s) they used)."
                    if result.sessions
                    else "."
                )
            )
        )
