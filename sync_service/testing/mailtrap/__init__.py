"""A stateful test double of Mailtrap's contacts API (see ``double``)."""
