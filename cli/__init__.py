"""The ``sdo-adv`` command line (installed as ``sdo_adv.cli``)."""
