"""Small models and data shared by the run-layer tests."""


def tiny_run_setup():
    """A 2-channel Euler ODE-net on 8x8 inputs and 4 examples, the last misclassified (run-layer tests)."""
    import torch

    from models import ODENet, SolverConfig

    torch.manual_seed(0)
    net = ODENet(channels=2, solver=SolverConfig.fixed("euler", 2), input_size=8).eval()
    x = torch.rand(4, 1, 8, 8)
    y = net(x).argmax(1)
    y[3] = (y[3] + 1) % 10  # one misclassified example
    return net, x, y
