"""The settings card that ``/settings`` posts in the notification channel.

Everyone sees the settings read-only, with a "Change" button. Pressing it is an
``Action.Execute``: the bot checks the team's roster and answers an owner with the editable
form (which only they see: an invoke answer replaces the card for the person who pressed)
and anyone else with the read-only card and the reason. Saving checks again, since a card's
data can be crafted. Built like the conversation card (typed models, Adaptive Card 1.5).
"""

from __future__ import annotations

from typing import Any

from microsoft_teams.cards import (
    AdaptiveCard,
    CardElement,
    Choice,
    ChoiceSetInput,
    ExecuteAction,
    Fact,
    FactSet,
    TeamsCardProperties,
    TextBlock,
)

from cards.conversation import plain_text

VIEW_VERB, EDIT_VERB, SAVE_VERB = "settings_view", "settings_edit", "settings_save"
VERBS = (VIEW_VERB, EDIT_VERB, SAVE_VERB)
UPDATE_TYPE_LABELS = {"new_conversations": "New conversations only", "all_activity": "All conversation activity"}


def settings_card(
    workspace_id: str,
    workspace_name: str,
    channel_name: str,
    update_type: str,
    *,
    notice: str | None = None,
    problem: str | None = None,
) -> dict[str, Any]:
    """The settings as they are, for everyone: read-only, with "Change" for owners."""
    body = _heading(workspace_name, notice, problem)
    body.append(
        FactSet(
            facts=[
                Fact(title="Notification channel", value=plain_text(channel_name)),
                Fact(title="Updates", value=UPDATE_TYPE_LABELS.get(update_type, update_type)),
            ]
        )
    )
    body.append(TextBlock(text="Team owners can change these settings.", is_subtle=True, size="Small", wrap=True))
    change = ExecuteAction(title="Change", verb=EDIT_VERB, data={"workspace": workspace_id})
    return _card(body, [change])


def settings_form(
    workspace_id: str,
    workspace_name: str,
    channels: list[tuple[str, str]],
    selected_channel_id: str,
    update_type: str,
    *,
    problem: str | None = None,
) -> dict[str, Any]:
    """The form an owner changes them in; ``channels`` are the team's (id, name). Choice
    titles are plain text in every host, so names go in as they are."""
    body = _heading(workspace_name, None, problem)
    body.append(
        ChoiceSetInput(
            id="notification_channel_id",
            label="Notification channel (new conversations are announced here)",
            choices=[Choice(title=name, value=channel_id) for channel_id, name in channels],
            value=selected_channel_id,
            is_required=True,
            error_message="Choose a channel",
        )
    )
    body.append(
        ChoiceSetInput(
            id="update_type",
            label="What to post there",
            style="expanded",
            choices=[Choice(title=label, value=value) for value, label in UPDATE_TYPE_LABELS.items()],
            value=update_type,
            is_required=True,
        )
    )
    data = {"workspace": workspace_id}
    actions = [
        ExecuteAction(title="Save", verb=SAVE_VERB, data=dict(data), associated_inputs="auto", style="positive"),
        ExecuteAction(title="Cancel", verb=VIEW_VERB, data=dict(data), associated_inputs="none"),
    ]
    return _card(body, actions)


def _heading(workspace_name: str, notice: str | None, problem: str | None) -> list[CardElement]:
    body: list[CardElement] = [
        TextBlock(text="neetoChat integration settings", weight="Bolder", size="Large", wrap=True),
        TextBlock(text=f"Workspace: {plain_text(workspace_name)}", is_subtle=True, spacing="None", wrap=True),
    ]
    if notice:
        body.append(TextBlock(text=plain_text(notice), wrap=True, color="Good"))
    if problem:
        body.append(TextBlock(text=plain_text(problem), wrap=True, color="Attention"))
    return body


def _card(body: list[CardElement], actions: list[Any]) -> dict[str, Any]:
    card = AdaptiveCard(version="1.5", body=body, actions=actions, msteams=TeamsCardProperties(width="full"))
    return card.model_dump(exclude_none=True)
