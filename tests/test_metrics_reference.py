"""Independent cross-checks of `histodiff.metrics` on real tissue images.

FSIMc: no maintained FSIM library can be installed here (piq needs torchvision), so this file holds a second,
straightforward NumPy implementation that follows the authors' MATLAB reference (`FeatureSIM.m` with Kovesi's
`phasecong2` and `lowpassfilter`, Zhang et al. 2011) line by line: 1-based MATLAB indexing is translated
explicitly, `conv2(..., 'same')` is the centre of a full `scipy.signal.convolve2d`, `median` is `np.median`.
It shares no code with the library (which is batched torch), so agreement to 1e-8 checks both.
SSIM: a direct transcription of Wang et al. (2004) with scipy's Gaussian filter, against `metrics.ssim`
(scikit-image); PSNR against scikit-image's `peak_signal_noise_ratio`.
"""

import math
import numpy as np
import pytest
import skimage
from scipy.ndimage import gaussian_filter
from scipy.signal import convolve2d
from skimage.metrics import peak_signal_noise_ratio

from histodiff import metrics


# ---------------------------------------------------------------- MATLAB reference, transcribed
def conv2_same(a, k):
    "MATLAB conv2(a, k, 'same'): the central part of the full convolution, starting at floor(size(k)/2) + 1."
    full = convolve2d(a, k, mode='full')
    r0, c0 = k.shape[0] // 2, k.shape[1] // 2
    return full[r0 : r0 + a.shape[0], c0 : c0 + a.shape[1]]


def matlab_range(n):
    if n % 2:
        return np.arange(-(n - 1) / 2, (n - 1) / 2 + 1) / (n - 1)
    return np.arange(-n / 2, n / 2) / n


def lowpassfilter(rows, cols, cutoff, n):
    x, y = np.meshgrid(matlab_range(cols), matlab_range(rows))
    radius = np.sqrt(x**2 + y**2)
    return np.fft.ifftshift(1.0 / (1.0 + (radius / cutoff) ** (2 * n)))


def phasecong2(im):
    nscale, norient, minWaveLength, mult, sigmaOnf, dThetaOnSigma, k, epsilon = 4, 4, 6, 2, 0.55, 1.2, 2.0, 0.0001
    thetaSigma = math.pi / norient / dThetaOnSigma
    rows, cols = im.shape
    imagefft = np.fft.fft2(im)
    zero = np.zeros((rows, cols))
    EO = {}
    ifftFilterArray = [None] * nscale
    x, y = np.meshgrid(matlab_range(cols), matlab_range(rows))
    radius = np.sqrt(x**2 + y**2)
    theta = np.arctan2(-y, x)
    radius = np.fft.ifftshift(radius)
    theta = np.fft.ifftshift(theta)
    radius[0, 0] = 1
    sintheta, costheta = np.sin(theta), np.cos(theta)
    lp = lowpassfilter(rows, cols, 0.45, 15)
    logGabor = []
    for s in range(1, nscale + 1):
        wavelength = minWaveLength * mult ** (s - 1)
        fo = 1.0 / wavelength
        lg = np.exp((-((np.log(radius / fo)) ** 2)) / (2 * math.log(sigmaOnf) ** 2))
        lg = lg * lp
        lg[0, 0] = 0
        logGabor.append(lg)
    spread = []
    for o in range(1, norient + 1):
        angl = (o - 1) * math.pi / norient
        ds = sintheta * math.cos(angl) - costheta * math.sin(angl)
        dc = costheta * math.cos(angl) + sintheta * math.sin(angl)
        dtheta = np.abs(np.arctan2(ds, dc))
        spread.append(np.exp((-(dtheta**2)) / (2 * thetaSigma**2)))
    EnergyAll = np.zeros((rows, cols))
    AnAll = np.zeros((rows, cols))
    for o in range(1, norient + 1):
        sumE_ThisOrient = zero.copy()
        sumO_ThisOrient = zero.copy()
        sumAn_ThisOrient = zero.copy()
        Energy = zero.copy()
        for s in range(1, nscale + 1):
            filt = logGabor[s - 1] * spread[o - 1]
            ifftFilt = np.real(np.fft.ifft2(filt)) * math.sqrt(rows * cols)
            ifftFilterArray[s - 1] = ifftFilt
            EO[s, o] = np.fft.ifft2(imagefft * filt)
            An = np.abs(EO[s, o])
            sumAn_ThisOrient = sumAn_ThisOrient + An
            sumE_ThisOrient = sumE_ThisOrient + np.real(EO[s, o])
            sumO_ThisOrient = sumO_ThisOrient + np.imag(EO[s, o])
            if s == 1:
                EM_n = np.sum(filt**2)
        XEnergy = np.sqrt(sumE_ThisOrient**2 + sumO_ThisOrient**2) + epsilon
        MeanE = sumE_ThisOrient / XEnergy
        MeanO = sumO_ThisOrient / XEnergy
        for s in range(1, nscale + 1):
            E = np.real(EO[s, o])
            O = np.imag(EO[s, o])
            Energy = Energy + E * MeanE + O * MeanO - np.abs(E * MeanO - O * MeanE)
        medianE2n = np.median(np.abs(EO[1, o]).ravel() ** 2)
        meanE2n = -medianE2n / math.log(0.5)
        noisePower = meanE2n / EM_n
        EstSumAn2 = zero.copy()
        for s in range(nscale):
            EstSumAn2 = EstSumAn2 + ifftFilterArray[s] ** 2
        EstSumAiAj = zero.copy()
        for si in range(nscale - 1):
            for sj in range(si + 1, nscale):
                EstSumAiAj = EstSumAiAj + ifftFilterArray[si] * ifftFilterArray[sj]
        EstNoiseEnergy2 = 2 * noisePower * np.sum(EstSumAn2) + 4 * noisePower * np.sum(EstSumAiAj)
        tau = math.sqrt(EstNoiseEnergy2 / 2)
        EstNoiseEnergy = tau * math.sqrt(math.pi / 2)
        EstNoiseEnergySigma = math.sqrt((2 - math.pi / 2) * tau**2)
        T = (EstNoiseEnergy + k * EstNoiseEnergySigma) / 1.7
        Energy = np.maximum(Energy - T, zero)
        EnergyAll = EnergyAll + Energy
        AnAll = AnAll + sumAn_ThisOrient
    return EnergyAll / AnAll


def feature_sim(imageRef, imageDis):
    "Returns (FSIM, FSIMc) exactly as FeatureSIM.m."
    rows, cols = imageRef.shape[:2]
    r, d = imageRef.astype(np.float64), imageDis.astype(np.float64)
    Y1 = 0.299 * r[..., 0] + 0.587 * r[..., 1] + 0.114 * r[..., 2]
    Y2 = 0.299 * d[..., 0] + 0.587 * d[..., 1] + 0.114 * d[..., 2]
    I1 = 0.596 * r[..., 0] - 0.274 * r[..., 1] - 0.322 * r[..., 2]
    I2 = 0.596 * d[..., 0] - 0.274 * d[..., 1] - 0.322 * d[..., 2]
    Q1 = 0.211 * r[..., 0] - 0.523 * r[..., 1] + 0.312 * r[..., 2]
    Q2 = 0.211 * d[..., 0] - 0.523 * d[..., 1] + 0.312 * d[..., 2]
    minDimension = min(rows, cols)
    F = max(1, int(math.floor(minDimension / 256 + 0.5)))  # MATLAB round: halves away from zero
    aveKernel = np.ones((F, F)) / F**2  # fspecial('average', F)
    I1 = conv2_same(I1, aveKernel)[0::F, 0::F]
    I2 = conv2_same(I2, aveKernel)[0::F, 0::F]
    Q1 = conv2_same(Q1, aveKernel)[0::F, 0::F]
    Q2 = conv2_same(Q2, aveKernel)[0::F, 0::F]
    Y1 = conv2_same(Y1, aveKernel)[0::F, 0::F]
    Y2 = conv2_same(Y2, aveKernel)[0::F, 0::F]
    PC1, PC2 = phasecong2(Y1), phasecong2(Y2)
    dx = np.array([[3, 0, -3], [10, 0, -10], [3, 0, -3]]) / 16
    dy = np.array([[3, 10, 3], [0, 0, 0], [-3, -10, -3]]) / 16
    gradientMap1 = np.sqrt(conv2_same(Y1, dx) ** 2 + conv2_same(Y1, dy) ** 2)
    gradientMap2 = np.sqrt(conv2_same(Y2, dx) ** 2 + conv2_same(Y2, dy) ** 2)
    T1, T2, T3, T4, lam = 0.85, 160, 200, 200, 0.03
    PCSimMatrix = (2 * PC1 * PC2 + T1) / (PC1**2 + PC2**2 + T1)
    gradientSimMatrix = (2 * gradientMap1 * gradientMap2 + T2) / (gradientMap1**2 + gradientMap2**2 + T2)
    PCm = np.maximum(PC1, PC2)
    FSIM = np.sum(gradientSimMatrix * PCSimMatrix * PCm) / np.sum(PCm)
    ISimMatrix = (2 * I1 * I2 + T3) / (I1**2 + I2**2 + T3)
    QSimMatrix = (2 * Q1 * Q2 + T4) / (Q1**2 + Q2**2 + T4)
    SimMatrixC = gradientSimMatrix * PCSimMatrix * np.real((ISimMatrix * QSimMatrix).astype(complex) ** lam) * PCm
    FSIMc = np.sum(SimMatrixC) / np.sum(PCm)
    return FSIM, FSIMc


def ssim_wang(x, y, L=255, sigma=1.5, K1=0.01, K2=0.03):
    "Wang et al. 2004 mean SSIM per channel, Gaussian window (11x11: truncated at 3.5 sigma), border of 5 px cropped."
    vals = []
    for c in range(3):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        g = lambda z: gaussian_filter(z, sigma, truncate=3.5)
        mx, my = g(a), g(b)
        sxx, syy, sxy = g(a * a) - mx**2, g(b * b) - my**2, g(a * b) - mx * my
        C1, C2 = (K1 * L) ** 2, (K2 * L) ** 2
        s = ((2 * mx * my + C1) * (2 * sxy + C2)) / ((mx**2 + my**2 + C1) * (sxx + syy + C2))
        vals.append(s[5:-5, 5:-5].mean())
    return float(np.mean(vals))


# ---------------------------------------------------------------- real image pairs
def _pairs():
    clean = skimage.data.immunohistochemistry()
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255).round().astype(np.uint8)
    blur = np.clip(gaussian_filter(clean.astype(float), (1.2, 1.2, 0)), 0, 255).round().astype(np.uint8)
    jpeg_like = (clean // 16 * 16 + 8).astype(np.uint8)  # 4-bit quantisation
    return clean, {'noise': noisy, 'blur': blur, 'quantised': jpeg_like}


CLEAN, DEGRADED = _pairs()
CROPS = {
    '512x512 (F=2)': (slice(None), slice(None)),
    '387x500 (F=2, odd rows)': (slice(0, 387), slice(3, 503)),
    '200x240 (F=1)': (slice(100, 300), slice(50, 290)),
    '97x64 (F=1, odd)': (slice(7, 104), slice(20, 84)),
}


@pytest.mark.parametrize('kind', list(DEGRADED))
@pytest.mark.parametrize('crop', list(CROPS))
def test_fsim_matches_matlab_transcription(kind, crop):
    c, d = CLEAN[CROPS[crop]], DEGRADED[kind][CROPS[crop]]
    ref_fsim, ref_fsimc = feature_sim(c, d)
    assert 0.5 < ref_fsimc < 1
    assert metrics.fsim(d, c) == pytest.approx(ref_fsimc, abs=1e-8)
    assert metrics.fsim(d, c, chromatic=False) == pytest.approx(ref_fsim, abs=1e-8)


def test_fsim_batch_and_properties():
    c = CLEAN[:256, :256]
    assert metrics.fsim(c, c) == pytest.approx(1.0, abs=1e-12)
    levels = [
        np.clip(c + np.random.default_rng(3).normal(0, s, c.shape), 0, 255).round().astype(np.uint8)
        for s in (1, 5, 15, 40)
    ]
    vals = metrics.fsim(np.stack(levels), np.stack([c] * 4))
    assert np.all(np.diff(vals) < 0), vals
    assert vals == pytest.approx([feature_sim(c, x)[1] for x in levels], abs=1e-8)


@pytest.mark.parametrize('kind', list(DEGRADED))
def test_ssim_psnr_against_independent(kind):
    c, d = CLEAN, DEGRADED[kind]
    assert metrics.ssim(d, c) == pytest.approx(ssim_wang(d, c), abs=1e-6)
    assert metrics.psnr(d, c) == pytest.approx(peak_signal_noise_ratio(c, d, data_range=255), abs=1e-10)
    mask = np.zeros(c.shape[:2], bool)
    mask[100:300, 50:260] = True
    assert metrics.psnr_artifact(d, c, mask) == pytest.approx(
        peak_signal_noise_ratio(c[mask], d[mask], data_range=255), abs=1e-10
    )
    assert metrics.mse_artifact(d, c, mask) == pytest.approx(
        np.mean((c[mask] / 255.0 - d[mask] / 255.0) ** 2), abs=1e-14
    )
    assert metrics.l2(d, c) == pytest.approx(np.linalg.norm(c / 255.0 - d / 255.0), abs=1e-10)


def test_papers_psnr_offset():
    # a PSNR computed with a 4095 peak on 8-bit data is the 8-bit PSNR + 20 log10(4095/255)
    c, d = CLEAN, DEGRADED['noise']
    p4095 = peak_signal_noise_ratio(c, d, data_range=4095)
    assert metrics.psnr_from_4095_peak(p4095) == pytest.approx(metrics.psnr(d, c), abs=1e-10)
