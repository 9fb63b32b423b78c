"""How a benchmark command's refusal of a bad input must look (a helper of the tests here): exit 2, argparse's usage
above at most, then one line "<prog>: error: ..." that names what is wrong, and no traceback."""
import pytest


def refused(capsys, main, argv, *words):
    """Runs main(argv), which must refuse; returns its error line, which must hold each of `words`."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exc.value.code == 2, err
    assert "Traceback" not in err, err
    assert ": error: " in lines[-1], err
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), err  # argparse's usage, nothing else
    for word in words:
        assert word in lines[-1], err
    return lines[-1]
