"""The protocol table (fedmpi.messages) is the one definition of the message kinds:
the header's Kind, the MPI tags and the HDF5 kind names all follow it."""

from fedmpi import messages, transport, wire
from fedmpi.results import schema


def test_every_kind_has_a_value_a_tag_and_a_name_from_the_table():
    assert [(k.name, k.value) for k in wire.Kind] == [(m.name, m.value)
                                                       for m in messages.MESSAGES]
    for m in messages.MESSAGES:
        kind = wire.Kind[m.name]
        assert transport.TAG_OF[kind] == messages.TAG_NUMBER[m.tag]
        assert schema.KIND_NAMES[kind] == m.hdf5
        assert m.direction in (messages.DOWN, messages.UP, messages.BOTH)
        assert m.description
    assert set(transport.TAG_OF) == set(wire.Kind)  # MEMORY was missing before


def test_schema_kind_names_equal_the_table():
    assert schema.KIND_NAMES == {m.value: m.hdf5 for m in messages.MESSAGES}
    assert len(set(schema.KIND_NAMES.values())) == len(schema.KIND_NAMES)


def test_tags_are_unique_and_named_in_transport():
    numbers = [t for t in messages.TAGS]
    assert len(set(numbers)) == len(numbers)
    for number, (name, what) in messages.TAGS.items():
        assert getattr(transport, f"TAG_{name}") == number
        assert transport._tag_name(number) == what
    assert {m.tag for m in messages.MESSAGES} <= set(messages.TAG_NUMBER)
