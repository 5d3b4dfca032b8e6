"Package setup: every piece of metadata comes from settings.ini (nbdev 2 layout)."
from configparser import ConfigParser
from packaging.version import Version
import re, setuptools, shlex

assert Version(setuptools.__version__) >= Version('36.2')

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

expected = 'version description keywords author author_email'.split()
missing = [o for o in expected if o not in cfg]
if missing: raise ValueError(f"settings.ini is missing: {missing}")

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.9 3.10 3.11 3.12 3.13'.split()

requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
bench_requirements = shlex.split(cfg.get('bench_requirements', ''))
baselines_requirements = shlex.split(cfg.get('baselines_requirements', ''))
min_python = cfg['min_python']
lic = licenses[cfg['license']]

# The README's links are relative to the repository; on a package index they would point nowhere, so the long
# description links to the repository itself.
readme = open('README.md', encoding='utf-8').read()
long_description = re.sub(r'\]\((?!https?://|#|mailto:)([^)\s]+)\)', lambda m: f"]({cfg['git_url']}/blob/{cfg['branch']}/{m[1]})", readme)

setuptools.setup(
    name=cfg['lib_name'],
    license=lic[0],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'License :: ' + lic[1],
                 'Natural Language :: ' + cfg['language'].title()]
                + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['pttfs', 'pttfs.*']),
    include_package_data=True,
    package_data={'pttfs': ['csrc/*.cpp', 'csrc/*.h']},   # the fused kernel's C++ sources, compiled on first use
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'bench': bench_requirements, 'baselines': baselines_requirements},
    python_requires='>=' + min_python,
    long_description=long_description,
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f"{cfg.get('lib_path')}={cfg.get('lib_path')}._modidx:d"]},
    version=cfg['version'], description=cfg['description'], keywords=cfg['keywords'],
    author=cfg['author'], author_email=cfg['author_email'],
)
